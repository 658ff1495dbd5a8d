"""The analyzer's paired statistics of shadow events, through the real lake, against numpy, scipy and
statsmodels on the raw pairs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

from splitwatch.service.analyzer.kpi_queries import prepare_events
from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.analyzer.shadow_stats import shadow_summaries
from splitwatch.service.events import ShadowEvent, ShadowSide


def test_shadow_pairs_from_the_lake_match_references_on_the_raw_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n = 300
    ctrl_lat = rng.lognormal(np.log(200), 0.4, n)
    shad_lat = ctrl_lat * rng.lognormal(np.log(1.3), 0.2, n)
    ctrl_tok = rng.integers(20, 80, n)
    shad_tok = ctrl_tok + rng.integers(-5, 15, n)
    ctrl_err = rng.random(n) < 0.03
    shad_err = rng.random(n) < 0.10
    sim = rng.uniform(10, 90, n)
    ratio = rng.lognormal(0, 0.3, n)
    refuse_c, refuse_s = rng.random(n) < 0.05, rng.random(n) < 0.15
    json_asked = rng.random(n) < 0.3
    json_c, json_s = rng.random(n) < 0.95, rng.random(n) < 0.8
    t0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
    records = []
    for i in range(n):
        def side(lat: float, tok: int, err: bool) -> ShadowSide:
            return ShadowSide(status_code=None if err else 200, latency_ms=lat, completion_tokens=int(tok),
                              error="timeout" if err else None)

        scores = None
        if not (ctrl_err[i] or shad_err[i]):
            scores = {"similarity": sim[i], "length_ratio": ratio[i], "refusal_control": float(refuse_c[i]),
                      "refusal_candidate": float(refuse_s[i]), "same_finish": 1.0}
            if json_asked[i]:
                scores.update(json_control=float(json_c[i]), json_candidate=float(json_s[i]))
        ev = ShadowEvent(experiment="support-ft", phase=1, arm="base", unit_id=f"u{i}", request_id=f"r{i}",
                         candidate="finetuned", control=side(ctrl_lat[i], ctrl_tok[i], ctrl_err[i]),
                         shadow=side(shad_lat[i], shad_tok[i], shad_err[i]), scores=scores,
                         json_requested=bool(json_asked[i]), ts=t0 + timedelta(seconds=i))
        records.append(Record(0, i, ev.to_json()))
    lake = Lake(tmp_path)
    assert lake.write_batch(0, records) == (n, 0)
    con = duckdb.connect()
    prepare_events(con, lake.glob("support-ft"), 1)
    (s,) = shadow_summaries(con, t0, t0 + timedelta(days=1))
    assert shadow_summaries(con)[0]["pairs"] == n  # no period: every pair (the live analyzer's gauges)

    ok = ~ctrl_err & ~shad_err
    assert s["candidate"] == "finetuned" and s["pairs"] == n
    lat = s["latency_ms"]
    assert lat["n"] == ok.sum()
    assert lat["difference"] == pytest.approx(np.mean(shad_lat[ok] - ctrl_lat[ok]), rel=1e-9)
    assert lat["p_value"] == pytest.approx(sps.wilcoxon(shad_lat[ok], ctrl_lat[ok]).pvalue, rel=1e-9)
    assert lat["shadow_median"] == pytest.approx(np.median(shad_lat[ok]), rel=1e-9)
    assert lat["low"] < lat["difference"] < lat["high"] and lat["low"] > 0  # 30% slower: clearly
    tok = s["completion_tokens"]
    assert tok["difference"] == pytest.approx(np.mean(shad_tok[ok] - ctrl_tok[ok]), rel=1e-9)
    err = s["error_rate"]
    b, c = int((ctrl_err & ~shad_err).sum()), int((~ctrl_err & shad_err).sum())
    both = int((ctrl_err & shad_err).sum())
    assert err["p_value"] == pytest.approx(mcnemar([[both, b], [c, n - both - b - c]], exact=True).pvalue, rel=1e-9)
    assert err["estimate_b"] == pytest.approx(shad_err.mean())
    assert s["similarity"]["n"] == ok.sum()
    for q in (10, 50, 90):
        assert s["similarity"][f"p{q}"] == pytest.approx(np.percentile(sim[ok], q), rel=1e-9)
    assert s["length_ratio_median"] == pytest.approx(np.median(ratio[ok]), rel=1e-9)
    assert s["refused_only_candidate"] == pytest.approx((refuse_s & ~refuse_c)[ok].mean())
    js = ok & json_asked & json_c
    assert s["json_pairs"] == js.sum() and s["broke_json"] == pytest.approx((~json_s)[js].mean())
    # the report's row of it
    from types import SimpleNamespace

    from splitwatch.service.analyzer.report_tables import SHADOW_HEADER, shadow_rows

    (row,) = shadow_rows(SimpleNamespace(shadow=[s]))
    assert len(row) == len(SHADOW_HEADER) and row[0] == "finetuned" and row[1] == "300"
    assert row[3].startswith("+") and "%" in row[6]

    # the live analyzer's gauges of it
    from splitwatch.service import metrics
    from splitwatch.service.analyzer.shadow_stats import export_shadow_gauges

    export_shadow_gauges("support-ft", [s])
    reg = metrics.ANALYZER_REGISTRY
    labels = {"experiment": "support-ft", "candidate": "finetuned"}
    assert reg.get_sample_value("splitwatch_shadow_pairs_analyzed", labels) == 300
    assert reg.get_sample_value("splitwatch_shadow_difference", {**labels, "metric": "latency_ms",
                                                                  "bound": "estimate"}) == lat["difference"]
    assert reg.get_sample_value("splitwatch_shadow_difference", {**labels, "metric": "error_rate",
                                                                  "bound": "lower"}) == err["low"]
    assert reg.get_sample_value("splitwatch_shadow_similarity", {**labels, "quantile": "p50"}) == \
        s["similarity"]["p50"]
    assert reg.get_sample_value("splitwatch_shadow_share", {**labels, "what": "broke_json"}) == s["broke_json"]


def test_compare_answers_scores_a_pair() -> None:
    from splitwatch.service.features.answer_comparison import compare_answers, is_json

    same = compare_answers("Your order ships today.", "Your order ships today.", False, "stop", "stop")
    assert same["similarity"] == 100.0 and same["length_ratio"] == 1.0 and same["same_finish"] == 1.0
    assert "json_control" not in same  # JSON was not asked for
    pair = compare_answers('{"intent": "refund"}', "I'm sorry, but I can't help with that.", True, "stop", "length")
    assert pair["json_control"] == 1.0 and pair["json_candidate"] == 0.0
    assert pair["refusal_candidate"] == 1.0 and pair["refusal_control"] == 0.0 and pair["same_finish"] == 0.0
    assert pair["similarity"] < 20
    assert is_json('```json\n{"a": 1}\n```') and not is_json("{a: 1}")
    assert "length_ratio" not in compare_answers("", "anything", False, None, None)  # no ratio to an empty answer
