"""Issue 26, the fine-tune scorecard end to end: real stub models on real ports, the real command line.

Perplexity against a hand computation from the stubs' log-probabilities (echo, and vLLM's
prompt_logprobs); label probabilities to AUC-ROC and calibration against scikit-learn; regression;
a planted fine-tune that wins in domain and loses out of domain; case checks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS
from splitwatch.service.local.processes import StubModel
from tests.test_eval import _config, _eval


@pytest.fixture
def stub(tmp_path: Path):
    started: list[StubModel] = []

    def start(name: str, *extra: str) -> StubModel:
        s = StubModel(tmp_path, name, *extra)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(orjson.dumps(x).decode() + "\n" for x in lines))
    return path


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _by_metric(report: dict, against: str = "base") -> dict[str, dict]:
    return {c["metric"]: c for c in report["comparisons"] if c["against"] == against}


def test_perplexity_against_a_hand_computation_echo_and_prompt_logprobs(tmp_path: Path, stub) -> None:
    # the stubs give a token of c characters the log-probability -k c (k = 0.5 and 0.2): the reference's
    # tokens are the words after the prompt, so the expected perplexity is exp(k * chars / tokens)
    words = ["refund", "parcel", "password", "invoice", "order", "address", "delivery", "account"]
    lines = [{"id": f"g{i}", "prompt": f"Summarise case {i}:",
              "reference": " " + " ".join(words[(i + j) % len(words)] for j in range(3 + i % 4))} for i in range(30)]
    dataset = _write(tmp_path / "gen.jsonl", lines)
    base = stub("base", "--answer-key", str(dataset), "--accuracy", "0.5", "--logprob-per-char", "0.5")
    ft = stub("ft", "--answer-key", str(dataset), "--accuracy", "0.9", "--logprob-per-char", "0.2", "--refuse-echo")
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, "--logprobs", dataset=dataset)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    tokens = [w for x in lines for w in x["reference"].split()]
    chars = sum(len(w) for w in tokens)
    for arm, k in (("base", 0.5), ("finetuned", 0.2)):
        expected = math.exp(k * chars / len(tokens))
        assert report["per_arm"][arm]["perplexity"] == pytest.approx(expected, rel=1e-12), arm
        assert report["per_arm"][arm]["perplexity_tokens"] == len(tokens)
    lp = _by_metric(report)["log_perplexity"]
    per_case = [(0.2 - 0.5) * sum(len(w) for w in x["reference"].split()) / len(x["reference"].split())
                for x in lines]
    assert lp["difference"] == pytest.approx(np.mean(per_case), rel=1e-12)
    assert lp["verdict"] == "better" and lp["method"] == "paired_bootstrap"
    # the fine-tune's upstream refused echo: every call fell back to vLLM's prompt_logprobs
    ppl = [r for r in _results(out) if r["arm"] == "ppl/finetuned"]
    assert len(ppl) == 30 and all(r["error"] is None for r in ppl)
    # generation metrics end to end, each from its library (pinned in test_eval_metrics.py)
    for m in ("bleu", "chrf", "rouge_l", "meteor"):
        assert _by_metric(report)[m]["verdict"] == "better", m


def test_an_upstream_without_logprobs_gets_a_message_not_a_number(tmp_path: Path, stub) -> None:
    lines = [{"id": f"g{i}", "prompt": f"Say {i}:", "reference": f" words {i} and more"} for i in range(12)]
    dataset = _write(tmp_path / "gen.jsonl", lines)
    base = stub("base", "--answer-key", str(dataset), "--logprob-per-char", "0.3")
    ft = stub("ft", "--answer-key", str(dataset))  # serves no log-probabilities
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, "--logprobs", dataset=dataset)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["per_arm"]["finetuned"]["perplexity"] is None
    assert "finetuned: its upstream returned no log-probabilities ({'no_logprobs': 12})" in res.stderr
    assert "log_perplexity" not in _by_metric(report)
    assert "its upstream returned no log-probabilities" in (out / "report.md").read_text()


def test_label_probabilities_give_auc_and_calibration_as_scikit_learn_does(tmp_path: Path, stub) -> None:
    from sklearn.metrics import classification_report, roc_auc_score

    base = stub("base", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.7", "--label-confidence", "0.6")
    ft = stub("ft", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.95", "--label-confidence", "0.9")
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, "--logprobs", "--concurrency", "16")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    labels = report["labels"]
    truth = {json.loads(x)["id"]: json.loads(x)["label"] for x in SUPPORT_INTENTS.read_text().splitlines()}
    for arm, conf in (("base", 0.6), ("finetuned", 0.9)):
        answers = {r["case"]: r["answer"] for r in _results(out) if r["arm"] == arm}
        ids = sorted(answers)
        # the stub's rule, by hand: the answered label gets conf, the nine others share the rest
        probs = np.array([[conf if lab == answers[i] else (1 - conf) / 9 for lab in labels] for i in ids])
        codes = np.array([labels.index(truth[i]) for i in ids])
        onehot = np.eye(len(labels))[codes]
        fig = report["per_arm"][arm]
        assert fig["auc_roc"] == pytest.approx(roc_auc_score(codes, probs, multi_class="ovr"), abs=1e-12)
        # to 1e-8: the label probabilities are rounded to 1e-9 (probabilities.label_probabilities)
        assert fig["brier"] == pytest.approx(((probs - onehot) ** 2).sum(axis=1).mean(), abs=1e-8)
        right = np.mean([answers[i] == truth[i] for i in ids])
        assert fig["ece"] == pytest.approx(abs(conf - right), abs=1e-8)  # one confidence bin holds every case
        sk = classification_report([truth[i] for i in ids], [answers[i] for i in ids], labels=labels,
                                   output_dict=True, zero_division=0)
        for lab in labels:
            assert fig["per_class"]["labels"][lab]["recall"] == pytest.approx(sk[lab]["recall"], abs=1e-12)
            assert fig["per_class"]["labels"][lab]["precision"] == pytest.approx(sk[lab]["precision"], abs=1e-12)
        assert fig["per_class"]["macro"]["f1"] == pytest.approx(sk["macro avg"]["f1-score"], abs=1e-12)
        assert fig["probability_unmatched"] == 0
    cmp = _by_metric(report)
    assert cmp["auc_roc"]["verdict"] == "better" and cmp["brier"]["verdict"] == "better"
    assert "Per class" in (out / "report.md").read_text()


def test_regression_numbers_parsed_errors_tested_unparseable_counted(tmp_path: Path, stub) -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(7)
    lines = [{"id": f"r{i}", "prompt": f"Estimate the delivery days for order {i}.",
              "label": round(float(rng.uniform(1, 60)), 2)} for i in range(80)]
    dataset = _write(tmp_path / "reg.jsonl", lines)
    base = stub("base", "--answer-key", str(dataset), "--number-noise", "8", "--seed", "1", "--refusal-rate", "0.1")
    ft = stub("ft", "--answer-key", str(dataset), "--number-noise", "1", "--seed", "2")
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, dataset=dataset)
    assert res.returncode == 0, res.stderr
    assert "task regression, inferred from the lines" in res.stderr
    report = json.loads((out / "report.json").read_text())
    truth = {x["id"]: x["label"] for x in lines}
    for arm in ("base", "finetuned"):
        answers = {r["case"]: r["answer"] for r in _results(out) if r["arm"] == arm}
        parsed = {i: float(a) for i, a in answers.items() if not a.startswith("I'm sorry")}
        t = np.array([truth[i] for i in parsed])
        p = np.array(list(parsed.values()))
        fig = report["per_arm"][arm]
        assert fig["mse"] == pytest.approx(np.mean((p - t) ** 2), rel=1e-12)
        assert fig["mae"] == pytest.approx(np.mean(np.abs(p - t)), rel=1e-12)
        assert fig["r2"] == pytest.approx(r2_score(t, p), rel=1e-12)
        assert fig["parsed_cases"] == len(parsed)
        assert fig["unparseable_rate"] == pytest.approx(1 - len(parsed) / 80)
    assert report["per_arm"]["base"]["unparseable_rate"] > 0  # the refusals hold no number
    cmp = _by_metric(report)
    assert cmp["mse"]["verdict"] == cmp["mae"]["verdict"] == "better"
    assert cmp["mse"]["n"] == report["per_arm"]["base"]["parsed_cases"]  # pairs where both gave a number


def test_a_finetune_that_wins_in_domain_and_loses_out_of_domain_is_reported(tmp_path: Path, stub) -> None:
    base = stub("base", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.7")
    ft = stub("ft", "--answer-key", str(SUPPORT_INTENTS), "--accuracy", "0.97",
              "--accuracy-on", "split=out_of_domain:0.25")
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, "--concurrency", "16")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    sl = {(s["key"], s["value"], s["metric"]): s for s in report["slices"]}
    assert sl[("split", "in_domain", "accuracy")]["verdict"] == "better"
    assert sl[("split", "out_of_domain", "accuracy")]["verdict"] == "worse"
    assert sl[("split", "out_of_domain", "accuracy")]["cases"] == 60
    assert {s["key"] for s in report["slices"]} == {"domain", "split"}
    assert report["slice_correction"] == "bh" and report["slice_n_bootstrap"] >= 1000
    g = report["generalisation"]
    cand = g["candidates"]["finetuned"]
    assert cand["verdict_in"] == "better" and cand["verdict_out"] == "worse"
    assert cand["gain_difference_low"] > 0  # the gain in domain is larger than out of domain, interval above 0
    assert g["arms"]["finetuned"]["gap_low"] > 0 and g["arms"]["base"]["gap_low"] < 0 < g["arms"]["base"]["gap_high"]
    md = (out / "report.md").read_text()
    assert "the gain turns into a loss out of domain" in md and "## Slices" in md


def test_case_checks_pass_rates_with_mcnemar(tmp_path: Path, stub) -> None:
    schema = {"type": "object", "required": ["intent"], "properties": {"intent": {"type": "string"}}}
    lines = []
    for i in range(40):
        lines.append({"id": f"c{i}", "prompt": f"Reply to ticket {i}", "reference": f"ticket {i} refund policy applies",
                      "checks": {"must_contain": ["Refund Policy"], "must_not_contain": "guarantee",
                                 "regex": r"ticket \d+"}})
    lines.append({"id": "bad", "prompt": "x", "reference": "y", "checks": {"regex": "(unclosed"}})
    lines.append({"id": "js", "prompt": "json please", "reference": '{"intent": "refund"}',
                  "checks": {"json_schema": schema}})
    dataset = _write(tmp_path / "chk.jsonl", lines)
    base = stub("base", "--answer-key", str(dataset), "--accuracy", "0.3")
    ft = stub("ft", "--answer-key", str(dataset), "--accuracy", "1.0")
    out = tmp_path / "out"
    res = _eval(_config(tmp_path, base, ft), out, dataset=dataset)
    assert res.returncode == 0, res.stderr
    assert "line 41: checks.regex[0]: does not compile" in res.stderr  # a bad rule is a bad line, named
    report = json.loads((out / "report.json").read_text())
    cmp = _by_metric(report)
    assert cmp["checks_passed"]["method"] == "mcnemar_exact" and cmp["checks_passed"]["verdict"] == "better"
    assert report["per_arm"]["finetuned"]["checks_passed"] == 1.0
    assert report["per_arm"]["finetuned"]["check_json_schema"] == 1.0  # the right answer is valid JSON
    assert cmp["check_must_contain"]["n"] == 40  # only the cases with that rule
