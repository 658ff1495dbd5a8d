"""Issue 27: `splitwatch data` on planted tuning and eval files: duplicates, near duplicates, conflicting
labels, balance, empty and over-long cases, and eval cases copied from the tuning set; counts exact, ids
listed, and no text in the report unless asked."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import orjson

from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS
from splitwatch.service.local.processes import StubModel, splitwatch_command
from tests.test_eval import _config, _eval

VOCAB = [f"w{i}" for i in range(300)]
SECRET = "zebracorn"  # a word only the planted texts hold: it must not reach the report without --show-text


def _text(rng: random.Random, words: int = 60) -> str:
    return " ".join([SECRET, *rng.choices(VOCAB, k=words - 1)])


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(orjson.dumps(x).decode() + "\n" for x in lines))
    return path


def _planted(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(4)
    labels = ["billing"] * 40 + ["refund"] * 20 + ["shipping"] * 10
    train = [{"id": f"t{i}", "messages": [{"role": "user", "content": _text(rng)},
                                          {"role": "assistant", "content": lab}], "label": lab}
             for i, lab in enumerate(labels)]
    train += [{**train[i], "id": f"dup{i}"} for i in (0, 1, 2)]  # 3 exact duplicates
    for i in (3, 4):  # 2 near duplicates: one word of sixty changed
        words = train[i]["messages"][0]["content"].split()
        words[30] = "changed"
        train.append({**train[i], "id": f"near{i}",
                      "messages": [{"role": "user", "content": " ".join(words)}, train[i]["messages"][1]]})
    for i in (5, 6):  # 2 conflicts: the same message, another label
        train.append({"id": f"conflict{i}", "messages": [train[i]["messages"][0],
                                                         {"role": "assistant", "content": "complaint"}],
                      "label": "complaint"})
    train.append({"id": "empty", "prompt": "   ", "completion": "billing", "label": "billing"})
    train.append({"id": "long", "prompt": " ".join(rng.choices(VOCAB, k=3000)), "completion": "billing",
                  "label": "billing"})
    train.append({"nothing": True})  # a bad line
    evals = [{"id": f"e{i}", "prompt": _text(rng, 30), "label": "billing"} for i in range(16)]
    evals += [{"id": f"copied{i}", "prompt": train[10 + i]["messages"][0]["content"], "label": "refund"}
              for i in range(4)]  # copied from the tuning set
    return _write(tmp_path / "train.jsonl", train), _write(tmp_path / "test.jsonl", evals)


def test_planted_problems_are_counted_exactly_and_named(tmp_path: Path) -> None:
    train, test = _planted(tmp_path)
    out = tmp_path / "report"
    res = subprocess.run(splitwatch_command("data", str(train), "--eval", str(test), "--output", str(out)),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"examples": 99, "bad_lines": 1, "exact_duplicates": 3, "near_duplicates": 2,
                                "conflicting_groups": 2, "empty": 1, "over_long": 1, "contaminated": 4,
                                "eval_cases": 20}
    assert sorted(sorted(g) for g in report["exact_duplicates"]) == [
        [f"train.jsonl:dup{i}", f"train.jsonl:t{i}"] for i in (0, 1, 2)]
    assert sorted(sorted(g) for g in report["near_duplicates"]) == [
        [f"train.jsonl:near{i}", f"train.jsonl:t{i}"] for i in (3, 4)]
    assert sorted(sorted(c["examples"]) for c in report["conflicts"]) == [
        [f"train.jsonl:conflict{i}", f"train.jsonl:t{i}"] for i in (5, 6)]
    assert [c["case"] for c in report["contaminated"]] == [f"test.jsonl:copied{i}" for i in range(4)]
    assert report["contaminated_share"] == 0.2 and all(c["overlap"] == 1.0 for c in report["contaminated"])
    assert report["empty"] == ["train.jsonl:empty"] and report["over_long"] == ["train.jsonl:long"]
    assert report["labels"]["billing"] == 47 and report["imbalance_ratio"] == 47 / 2  # complaint: 2
    assert report["bad_lines"] == ["train.jsonl line 80: no messages, prompt, instruction or text field"]
    for name in ("report.md", "report.html", "report.json"):  # privacy: ids and counts, never the text
        assert SECRET not in (out / name).read_text(), name
    shown = subprocess.run(splitwatch_command("data", str(train), "--eval", str(test), "--output",
                                              str(tmp_path / "shown"), "--show-text"),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and SECRET in (tmp_path / "shown" / "report.md").read_text()


def test_eval_warns_when_its_test_set_is_in_the_tuning_data(tmp_path: Path) -> None:
    cases = [json.loads(x) for x in SUPPORT_INTENTS.read_text().splitlines()]
    leaked = [{"messages": [c["messages"][1], {"role": "assistant", "content": c["label"]}]} for c in cases[:11]]
    train = _write(tmp_path / "train.jsonl", leaked)
    base = StubModel(tmp_path, "base", "--answer-key", str(SUPPORT_INTENTS))
    ft = StubModel(tmp_path, "ft", "--answer-key", str(SUPPORT_INTENTS))
    for s in (base, ft):
        s.start()
    try:
        res = _eval(_config(tmp_path, base, ft), tmp_path / "out", "--train-data", str(train), "--concurrency", "16")
        assert res.returncode == 0, res.stderr
        flat = " ".join(res.stderr.split())
        warning = "warning: 11 of 220 test cases (5.0%) share at least half of their word 8-grams with --train-data"
        assert warning in flat
        assert "account_update-01, account_update-02" in flat
    finally:
        for s in (base, ft):
            s.stop()
