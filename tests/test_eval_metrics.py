"""Issue 26: each scorecard metric against its reference library or a hand computation, tolerances stated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitwatch.service.evaluation import scoring
from splitwatch.service.evaluation.checks import CheckSpecError, check_answer, parse_checks
from splitwatch.service.evaluation.dataset import load_dataset
from splitwatch.service.evaluation.logprobs import corpus_perplexity, reference_logprobs
from splitwatch.service.evaluation.meteor import meteor, wordnet
from splitwatch.service.evaluation.numeric import parse_number, regression_figures
from splitwatch.service.evaluation.probabilities import (
    auc_roc,
    brier_per_case,
    expected_calibration_error,
    label_probabilities,
    per_class,
)
from splitwatch.service.evaluation.ranking import rank_arms

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "refunds take five days", "hello"]
REFS = ["the cat is on the mat", "the quick brown fox jumped over", "a refund takes five working days", "hi there"]


def test_bleu_chrf_rouge_l_are_their_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    # BLEU from per-case statistics, summed: sacrebleu's corpus BLEU to 1e-9
    rows = scoring.bleu_statistics(HYPS, REFS)
    assert scoring.bleu_from_statistics(rows) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    for h, r in zip(HYPS, REFS, strict=True):
        assert scoring.chrf(h, r) == pytest.approx(sacrebleu.sentence_chrf(h, [r]).score, abs=1e-9)
        assert scoring.rouge_l(h, r) == pytest.approx(
            rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(r, h)["rougeL"].fmeasure, abs=1e-12)
    # ROUGE-L by hand: LCS("the cat sat on the mat", "the cat is on the mat") = 5 words; P = R = 5/6
    assert scoring.rouge_l(HYPS[0], REFS[0]) == pytest.approx(5 / 6, abs=1e-12)


def test_meteor_is_nltks_with_debians_wordnet_and_its_published_example() -> None:
    from nltk.translate.meteor_score import meteor_score

    # nltk's own documented example (nltk/translate/meteor_score.py doctest): 0.6944 to 4 places
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    hyp = hyp.split(" ")
    ref = "It is a guide to action that ensures that the military will forever heed Party commands"
    ref = ref.split(" ")
    assert round(meteor_score([ref], hyp, wordnet=wordnet()), 4) == 0.6944
    for h, r in zip(HYPS, REFS, strict=True):
        assert meteor(h, r) == pytest.approx(meteor_score([r.split()], h.split(), wordnet=wordnet()), abs=1e-12)
    # the synonyms come from WordNet 3.0: "jumps" meets "jumped" by stem, "hi"/"hello" by synset
    assert wordnet().get_version() == "3.0" and meteor("hello", "hi") > 0.4


def test_per_class_precision_recall_f1_by_hand() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "(other)", "c"]
    got = per_class(truth, pred, ["a", "b", "c"])
    # a: TP 2, FP 0, FN 1; b: TP 1, FP 1, FN 1; c: TP 1
    assert got["labels"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert got["labels"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert got["micro"]["precision"] == pytest.approx(4 / 5) and got["micro"]["recall"] == pytest.approx(4 / 6)
    assert got["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)


def test_probabilities_auc_brier_ece() -> None:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    # the top tokens "bill" (begins billing only) and "re" (begins refund and return: shared equally)
    p = label_probabilities({"bill": math.log(0.5), "re": math.log(0.4), "xyz": math.log(0.1)},
                            ["billing", "refund", "return"])
    assert p == pytest.approx([0.5 / 0.9, 0.2 / 0.9, 0.2 / 0.9], abs=1e-9)
    assert label_probabilities({"zzz": -0.1}, ["billing"]) is None
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, 300)
    p1 = np.clip(codes * 0.6 + rng.uniform(0, 0.4, 300), 0, 1)
    probs = np.column_stack([1 - p1, p1])
    assert auc_roc(codes, probs) == pytest.approx(roc_auc_score(codes, p1), abs=1e-12)
    # two classes: the multi-class Brier is twice scikit-learn's binary Brier score
    assert brier_per_case(codes, probs).mean() == pytest.approx(2 * brier_score_loss(codes, p1), abs=1e-12)
    # ECE by hand: confidence 0.8 on 10 cases, 6 right: |0.6 - 0.8| = 0.2
    probs = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(np.array([0] * 6 + [1] * 4), probs) == pytest.approx(0.2)


def test_regression_parsing_and_figures() -> None:
    from sklearn.metrics import r2_score

    assert parse_number("about 4.5 stars") == 4.5 and parse_number("1,200 units") == 1200.0
    assert parse_number("-3e2") == -300.0 and parse_number("no idea") is None and parse_number(".5") == 0.5
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, np.nan, 2.0, 4.0])
    got = regression_figures(truth, pred)
    assert got["parsed_cases"] == 3 and got["unparseable_rate"] == 0.25
    assert got["mse"] == pytest.approx((0.25 + 1 + 0) / 3) and got["mae"] == pytest.approx(1.5 / 3)
    assert got["r2"] == pytest.approx(r2_score([1, 3, 4], [1.5, 2, 4]))


def test_reference_log_probabilities_from_echo_and_prompt_logprobs() -> None:
    echo = {"choices": [{"text": "Q: x A: yes", "logprobs": {
        "tokens": ["Q:", " x", " A:", " yes"], "token_logprobs": [None, -1.0, -2.0, -0.5],
        "text_offset": [0, 2, 4, 7]}}]}
    assert reference_logprobs(echo, context_chars=7, prompt_chars=11) == [-0.5]
    assert reference_logprobs(echo, context_chars=0, prompt_chars=11) == [-1.0, -2.0, -0.5]
    vllm = {"choices": [{"text": "", "prompt_logprobs": [
        None, {"11": {"logprob": -1.0, "decoded_token": " x"}}, {"12": {"logprob": -2.0, "decoded_token": " A:"}},
        {"13": {"logprob": -0.5, "decoded_token": " yes"}}]}]}
    assert reference_logprobs(vllm, context_chars=7, prompt_chars=11) == [-0.5]  # counted back from the end
    assert reference_logprobs({"choices": [{"text": "x", "logprobs": None}]}, 0, 1) is None
    assert corpus_perplexity([[-1.0, -2.0], [-0.5]]) == pytest.approx(math.exp(3.5 / 3))


def test_case_checks() -> None:
    checks = parse_checks({"must_contain": ["Refund Policy"], "must_not_contain": "guarantee",
                           "regex": [r"#\d{4}"], "json_schema": {"type": "object", "required": ["a"]}})
    assert check_answer(checks, 'See our refund  policy, ticket #1234 {"a": 1}') == {
        "must_contain": True, "must_not_contain": True, "regex": True, "json_schema": False}
    fenced = parse_checks({"json_schema": {"type": "object", "required": ["a"]}})
    assert check_answer(fenced, '```json\n{"a": 1}\n```') == {"json_schema": True}
    for bad, field in (({"regex": "("}, "checks.regex[0]"), ({"json_schema": {"type": 3}}, "checks.json_schema"),
                       ({"must_contain": []}, "checks.must_contain"), ({"spell": "x"}, "checks.spell")):
        with pytest.raises(CheckSpecError) as exc:
            parse_checks(bad)
        assert exc.value.field == field


def test_ranking_orders_clear_arms_and_overlaps_close_ones() -> None:
    rng = np.random.default_rng(2)
    values = {"base": rng.binomial(1, 0.5, 300).astype(float), "lora": rng.binomial(1, 0.8, 300).astype(float),
              "full": rng.binomial(1, 0.81, 300).astype(float)}
    rows = rank_arms(values, higher_is_better=True, n_samples=1000)
    assert rows[-1].arm == "base" and rows[-1].rank_low == 3.0
    assert {r.arm for r in rows[:2]} == {"lora", "full"} and rows[0].rank_high == 2.0
    lower = rank_arms({k: -v for k, v in values.items()}, higher_is_better=False, n_samples=1000)
    assert [r.arm for r in lower] == [r.arm for r in rows]  # direction respected


def test_numeric_labels_regression_or_classes(tmp_path) -> None:
    reg = tmp_path / "reg.jsonl"
    reg.write_text("".join(f'{{"prompt": "p{i}", "label": {i * 1.5}}}\n' for i in range(10)))
    assert load_dataset(reg).task == "regression"
    stars = tmp_path / "stars.jsonl"
    stars.write_text("".join(f'{{"prompt": "p{i}", "label": {i % 5 + 1}}}\n' for i in range(10)))
    ds = load_dataset(stars)
    assert ds.task == "classification" and "--task regression reads them as numbers" in ds.describe()
    assert load_dataset(stars, "regression").cases[0].target == 1.0
    words = tmp_path / "words.jsonl"
    words.write_text('{"prompt": "p", "label": "five"}\n{"prompt": "q", "label": 3}\n')
    ds = load_dataset(words, "regression")
    assert len(ds.cases) == 1 and "line 1: label: must be a number for the task regression" in str(ds.bad_lines[0])
