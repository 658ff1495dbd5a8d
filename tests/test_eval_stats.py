"""`splitwatch eval`'s statistics against independent references: statsmodels' McNemar and scipy's
binomial test, scipy's paired t and Wilcoxon tests, scikit-learn's macro-F1, and sacrebleu's own
paired bootstrap; then the eval's verdicts on seeded stub answers (A/A, and a better arm)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats as sps

from splitwatch.service.config import ExperimentConfig
from splitwatch.service.evaluation import scoring
from splitwatch.service.evaluation.compare import batch_macro_f1, evaluate
from splitwatch.service.evaluation.dataset import SUPPORT_INTENTS, load_dataset
from splitwatch.service.evaluation.store import CallResult
from splitwatch.service.local.stub_model import KeyedCase, keyed_answer
from splitwatch.stats.errors import InvalidStatistics
from splitwatch.stats.paired import mcnemar_exact, paired_bootstrap, paired_t, wilcoxon_signed_rank

SUPPORT = SUPPORT_INTENTS


def test_mcnemar_matches_statsmodels_and_the_binomial_closed_form() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(1)
    for _ in range(20):
        a = (rng.random(150) < 0.6).astype(float)
        b = np.where(rng.random(150) < 0.2, 1 - a, a)
        res = mcnemar_exact(a, b)
        only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        both = int(((a == 1) & (b == 1)).sum())
        ref = mcnemar([[both, only_a], [only_b, 150 - both - only_a - only_b]], exact=True).pvalue
        # the exact McNemar test is the two-sided binomial test of the discordant pairs at 1/2
        closed = sps.binomtest(only_b, only_a + only_b, 0.5).pvalue
        assert res.p_value == pytest.approx(ref, abs=1e-12)
        assert res.p_value == pytest.approx(closed, abs=1e-12)
        assert res.difference == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        # Wald interval for paired proportions (Agresti 10.1.1), by hand
        se = np.sqrt(((only_a + only_b) / 150 - ((only_b - only_a) / 150) ** 2) / 150)
        assert res.low == pytest.approx(res.difference - 1.959964 * se, abs=1e-6)


def test_mcnemar_worked_example() -> None:
    # Agresti (2007, Table 8.1): approval of the prime minister in two surveys of the same 1,600 people,
    # 794 approve twice, 150 approve then not, 86 not then approve, 570 never. The difference in
    # approval is -0.04, its standard error 0.0095, so the Wald 95% interval -0.04 +- 0.0187.
    a = np.array([1] * 794 + [1] * 150 + [0] * 86 + [0] * 570, dtype=float)
    b = np.array([1] * 794 + [0] * 150 + [1] * 86 + [0] * 570, dtype=float)
    res = mcnemar_exact(a, b)
    assert res.difference == pytest.approx(-0.04, abs=1e-12)
    assert res.low == pytest.approx(-0.0587, abs=1e-3) and res.high == pytest.approx(-0.0213, abs=1e-3)
    assert res.p_value < 1e-4  # z = -4.17 in Agresti; the exact test agrees


def test_paired_t_and_wilcoxon_match_scipy() -> None:
    rng = np.random.default_rng(2)
    a = rng.lognormal(0, 0.5, 80)
    b = a * rng.lognormal(0.05, 0.2, 80)
    t = paired_t(a, b)
    assert t.p_value == pytest.approx(sps.ttest_rel(b, a).pvalue, rel=1e-12)
    ci = sps.ttest_rel(b, a).confidence_interval(0.95)
    assert (t.low, t.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    w = wilcoxon_signed_rank(a, b)
    assert w.p_value == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-12)
    same = wilcoxon_signed_rank(a, a.copy())
    assert same.p_value == 1.0 and same.difference == 0


def test_paired_bootstrap_of_a_mean_agrees_with_the_t_interval() -> None:
    # a large sample: the bootstrap's percentile interval and the t interval of the mean difference
    # agree to within a few percent of their width (Monte Carlo error, 4,000 resamples)
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 600)
    b = a + rng.normal(0.1, 1, 600)
    boot = paired_bootstrap(a, b, n_samples=4000, seed=5)
    t = paired_t(a, b)
    width = t.high - t.low
    assert boot.difference == pytest.approx(t.difference, abs=1e-12)
    assert abs(boot.low - t.low) < 0.05 * width and abs(boot.high - t.high) < 0.05 * width
    assert paired_bootstrap(a, a.copy()).p_value == 1.0  # identical systems are never "different"
    with pytest.raises(InvalidStatistics):
        paired_bootstrap(a, b[:-1])


def test_corpus_bleu_bootstrap_matches_sacrebleu_paired_test(monkeypatch: pytest.MonkeyPatch) -> None:
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    rng = random.Random(4)
    words = ["the", "a", "refund", "order", "is", "was", "your", "we", "will", "be", "shipped", "today",
             "account", "password", "reset", "please"]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(100)]

    def damage(text: str, p: float) -> str:
        return " ".join(w if rng.random() > p else rng.choice(words) for w in text.split())

    base = [damage(r, 0.6) for r in refs]
    cand = [damage(r, 0.25) for r in refs]
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    pt = PairedTest([("baseline", base), ("cand", cand)], {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)
    _, scores = pt()
    theirs = scores["BLEU"][1]
    ours = paired_bootstrap(scoring.bleu_statistics(base, refs), scoring.bleu_statistics(cand, refs),
                            scoring.bleu_from_statistics, n_samples=1000, seed=12345, p_method="sacrebleu")
    assert ours.estimate_b == pytest.approx(theirs.score, abs=1e-9)
    assert ours.estimate_a == pytest.approx(scoring.corpus_bleu(base, refs), abs=1e-9)
    # the same resamples and formula; sacrebleu sums float32 statistics, so a resample may tip over
    assert abs(ours.p_value - theirs.p_value) <= 2 / 1001
    assert ours.p_value < 0.05 and ours.difference > 0
    shifted = paired_bootstrap(scoring.bleu_statistics(base, refs), scoring.bleu_statistics(cand, refs),
                               scoring.bleu_from_statistics, n_samples=1000, seed=12345)
    assert shifted.p_value < 0.05 and (shifted.low, shifted.high) == (ours.low, ours.high)


def test_batch_macro_f1_equals_scikit_learn() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(6)
    t = rng.integers(0, 4, (30, 50))
    p = np.where(rng.random((30, 50)) < 0.7, t, rng.integers(0, 5, (30, 50)))  # 4 = named no label
    ours = batch_macro_f1(np.stack([t, p], axis=-1).astype(float), 4)
    for i in range(30):
        ref = f1_score(t[i], p[i], labels=[0, 1, 2, 3], average="macro", zero_division=0)
        assert ours[i] == pytest.approx(ref, abs=1e-12)


EXP = ExperimentConfig.model_validate({
    "key": "support-ft", "model": "support-bot",
    "arms": [{"name": "base", "weight": 1, "upstream": {"base_url": "http://a/v1", "model": "m1"}},
             {"name": "finetuned", "weight": 1, "upstream": {"base_url": "http://b/v1", "model": "m2"}}],
})


def _simulated_results(accuracy: dict[str, float], seed: int, repeats: int = 1, sampling: bool = True
                       ) -> dict[tuple[str, str, int], CallResult]:
    """Return the calls a run would record against stubs answering with ``keyed_answer`` (the stub's own rule)."""
    ds = load_dataset(SUPPORT)
    labels = ds.labels()
    rng = random.Random(seed)
    out = {}
    for c in ds.cases:
        for arm, acc in accuracy.items():
            for r in range(repeats):
                draw = rng if sampling else random.Random(f"{arm}:{c.id}")
                answer = keyed_answer(KeyedCase(c.label, None), labels, acc, draw)
                latency = rng.lognormvariate(-3, 0.4)
                out[(c.id, arm, r)] = CallResult(c.id, arm, r, 200, None, latency, 80, 1, "stop", answer)
    return out


@pytest.mark.slow
def test_aa_runs_are_not_distinguishable_in_95_percent_of_seeds() -> None:
    ds = load_dataset(SUPPORT)
    runs, clean, slices_clean = 200, 0, 0
    raw: dict[str, int] = {}
    for seed in range(runs):
        res = evaluate(EXP, ds, _simulated_results({"base": 0.75, "finetuned": 0.75}, seed), 1, n_bootstrap=300,
                       seed=seed)
        clean += all(c.verdict == "not distinguishable" for c in res.comparisons)
        # issue 26: the slices (domain x 4, split x 2; BH across them) are as quiet under A/A: under the global
        # null, BH's false-discovery rate is its family-wise error, 5%
        assert len(res.slices) == 18
        slices_clean += all(c.verdict == "not distinguishable" for c in res.slices)
        for c in res.comparisons:
            raw[c.metric] = raw.get(c.metric, 0) + (c.result.p_value < 0.05)
    assert clean / runs >= 0.95, clean  # Holm: the run's family-wise error at 5%
    assert slices_clean / runs >= 0.95, slices_clean
    # each test on its own rejects about 5% of A/A runs: at most 8% (2 standard errors over 200 runs)
    assert max(raw.values()) / runs <= 0.08, raw
    assert set(raw) == {"accuracy", "exact_match", "macro_f1", "error_rate", "latency_s", "completion_tokens"}


def test_a_better_arm_is_found_better_with_the_right_sign() -> None:
    ds = load_dataset(SUPPORT)
    res = evaluate(EXP, ds, _simulated_results({"base": 0.7, "finetuned": 0.85}, 11), 1)
    verdicts = {c.metric: c for c in res.comparisons}
    for metric in ("accuracy", "exact_match", "macro_f1"):
        assert verdicts[metric].verdict == "better", metric
        assert verdicts[metric].result.difference > 0.08
        assert verdicts[metric].p_adjusted < 0.05
    assert verdicts["accuracy"].result.method == "mcnemar_exact"
    assert res.per_arm["finetuned"]["accuracy"] > res.per_arm["base"]["accuracy"]
    assert sum(map(sum, res.per_arm["base"]["confusion"])) == len(ds.cases)


def test_a_sampling_arm_is_found_less_stable() -> None:
    ds = load_dataset(SUPPORT)
    base = _simulated_results({"base": 0.8}, 3, repeats=3, sampling=False)
    ft = _simulated_results({"finetuned": 0.8}, 3, repeats=3, sampling=True)
    res = evaluate(EXP, ds, {**base, **ft}, 3)
    verdicts = {c.metric: c for c in res.comparisons}
    assert res.per_arm["base"]["agreement"] == 1.0 and res.per_arm["finetuned"]["agreement"] < 0.8
    assert verdicts["agreement"].verdict == "worse" and verdicts["similarity"].verdict == "worse"


def test_dataset_reports_bad_lines_by_number_and_field(tmp_path: Path) -> None:
    lines = [
        {"id": "ok-1", "prompt": "hello", "reference": "hi"},
        "not json",
        {"id": "ok-2", "messages": [{"role": "wizard", "content": "x"}], "reference": "y"},
        {"id": "ok-1", "prompt": "again", "reference": "z"},
        {"prompt": "no reference here"},
        {"id": "ok-3", "prompt": "fine", "reference": "", "extra": 1},
        {"id": "ok-4", "messages": [{"role": "user", "content": "what"}], "reference": "this"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else orjson.dumps(x) for x in lines) + b"\n")
    ds = load_dataset(path, "generation")
    assert [c.id for c in ds.cases] == ["ok-1", "ok-4"]
    assert [(b.line, b.field) for b in ds.bad_lines] == [
        (2, "(line)"), (3, "messages[0].role"), (4, "id"), (5, "reference"), (6, "extra")]
    assert "is already the id of line 1" in str(ds.bad_lines[2])
    assert load_dataset(path).task == "open"  # not every line has a reference: inferred as open
