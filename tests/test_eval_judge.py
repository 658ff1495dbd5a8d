"""Issue 26, the judge you can trust: rubric ratings besides the pairwise preference, calibrated against
people's ratings (weighted kappa, Spearman, leniency), and people's ratings of each arm compared, paired.

A fair judge is trusted; a lenient one (every answer 5) and a position-biased one (always "1") are
flagged as not trusted, each with the figure that says why.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS
from splitwatch.service.evaluation.rubric import agreement
from tests.test_eval import JudgeHandler, _config, _eval, add_judge, serve


@pytest.fixture
def support_subset(tmp_path: Path) -> Path:
    lines = SUPPORT_INTENTS.read_text().splitlines()
    path = tmp_path / "support100.jsonl"
    path.write_text("\n".join(lines[::2] + lines[1:40:2]) + "\n")  # 130 cases, every intent
    return path


def _people(out: Path, rated: int, seed: int = 5) -> Path:
    """People's ratings of both arms' answers on the first ``rated`` cases: 5 when right, 2 when wrong, one
    rating in ten a point off."""
    rng = random.Random(seed)
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    truth = {json.loads(x)["id"]: json.loads(x)["label"] for x in SUPPORT_INTENTS.read_text().splitlines()}
    cases = sorted({r["case"] for r in results})[:rated]
    lines = []
    for r in results:
        if r["arm"] in ("base", "finetuned") and r["case"] in cases:
            base = 5 if r["answer"] == truth[r["case"]] else 2
            lines.append({"id": r["case"], "arm": r["arm"], "rater": "agent-7",
                          **{d: base - 1 if rng.random() < 0.1 else base
                             for d in ("relevance", "fluency", "factual_accuracy", "diversity")}})
    lines.append({"id": cases[0], "arm": "nobody", "relevance": 3})
    lines.append({"id": cases[1], "arm": "base", "relevance": 7})
    path = out.parent / "people.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("mode", ["fair", "lenient", "biased"])
def test_the_judge_is_trusted_only_when_it_agrees_with_people(tmp_path: Path, support_subset: Path, mode: str
                                                              ) -> None:
    from splitwatch.service.local.processes import StubModel

    server = serve(JudgeHandler, mode=mode)
    base = StubModel(tmp_path, "base", "--answer-key", str(support_subset), "--accuracy", "0.6")
    ft = StubModel(tmp_path, "ft", "--answer-key", str(support_subset), "--accuracy", "0.9")
    for s in (base, ft):
        s.start()
    try:
        cfg = _config(tmp_path, base, ft)
        add_judge(cfg, server)
        out = tmp_path / "out"
        first = _eval(cfg, out, "--judge", "referee", "--concurrency", "16", dataset=support_subset)
        assert first.returncode == 0, first.stderr
        people = _people(out, rated=60)
        res = _eval(cfg, out, "--judge", "referee", "--human", str(people), dataset=support_subset)
        assert res.returncode == 0, res.stderr
        assert "human ratings, bad line left out: line 121: arm: 'nobody' is not an arm" in res.stderr
        assert "line 122: relevance: must be an integer from 1 to 5, got 7" in res.stderr
        report = json.loads((out / "report.json").read_text())
        trust = {a["dimension"]: a for a in report["agreement"]}
        assert set(trust) == {"relevance", "fluency", "factual_accuracy", "diversity"}
        assert all(a["pairs"] == 120 for a in trust.values())  # 60 cases x 2 arms; the bad lines left out
        if mode == "lenient":
            assert not any(a["trusted"] for a in trust.values())
            assert trust["relevance"]["kappa"] == pytest.approx(0.0) and trust["relevance"]["leniency"] > 0.5
            assert "points above people" in trust["relevance"]["why"]
        else:
            assert all(a["trusted"] for a in trust.values()), trust
            assert trust["relevance"]["kappa_low"] >= 0.4 and trust["relevance"]["spearman"] > 0.7
        assert report["judge_pairwise_trusted"] == {"finetuned": mode != "biased"}
        md = (out / "report.md").read_text()
        assert "## Can the judge be trusted?" in md and ("not trusted" in md) == (mode != "fair")
        cmp = {c["metric"]: c for c in report["comparisons"]}
        # people's ratings of the two arms, paired per case: the better arm reads better
        assert cmp["human_relevance"]["method"] == "wilcoxon_signed_rank"
        assert cmp["human_relevance"]["verdict"] == "better" and cmp["human_relevance"]["n"] == 60
        if mode != "lenient":
            assert cmp["judge_factual_accuracy"]["verdict"] == "better"
        else:
            assert cmp["judge_factual_accuracy"]["verdict"] == "not distinguishable"
    finally:
        server.shutdown()
        for s in (base, ft):
            s.stop()


def test_weighted_kappa_and_spearman_match_statsmodels_and_scipy() -> None:
    from scipy.stats import spearmanr
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = np.random.default_rng(3)
    human = rng.integers(1, 6, 200)
    judge = np.clip(human + rng.integers(-1, 2, 200), 1, 5)
    got = agreement("relevance", judge.astype(float), human.astype(float), n_samples=500)
    table = np.zeros((5, 5))
    for j, h in zip(judge, human, strict=True):
        table[j - 1, h - 1] += 1
    # statsmodels' weighted kappa with quadratic weights (its "wt='quadratic'"), an independent formula
    assert got.kappa == pytest.approx(cohens_kappa(table, wt="quadratic").kappa, abs=1e-12)
    assert got.spearman == pytest.approx(spearmanr(judge, human).statistic, abs=1e-12)
    assert got.kappa_low < got.kappa < got.kappa_high and got.leniency == pytest.approx(judge.mean() - human.mean())
    assert got.trusted
    constant = agreement("relevance", np.full(200, 5.0), human.astype(float), n_samples=200)
    assert constant.kappa == pytest.approx(0.0) and not constant.trusted
