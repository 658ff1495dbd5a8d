"""The paired statistics of shadow traffic: each mirrored request answered by the control and by the
candidate, compared pair by pair (``shadow`` events in the lake, docs/shadow.md).

Per candidate: the paired difference in latency (Wilcoxon's signed-rank test, with the bootstrap
interval of the mean difference), in completion tokens (paired bootstrap) and in errors (exact
McNemar), from ``splitwatch.stats.paired``; the distribution of the answers' similarity (chrF,
quantiles); the median length ratio; and the shares of pairs where the candidate refused and the
control did not, and where JSON was asked for, the control's answer parsed and the candidate's did
not. With the lake's files, the same per prompt language (the exposure's ``language`` feature):
the pairs, the median similarity and length ratio, and whether the category's similarity is lower
than the other categories' (one-sided Mann-Whitney U, Benjamini-Hochberg over the categories),
which finds the kind of prompt the candidate answers differently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
from scipy import stats as sps

from ...stats.errors import StatsError
from ...stats.multiple_testing import adjust_p_values
from ...stats.paired import mcnemar_exact, paired_bootstrap, wilcoxon_signed_rank
from .kpi_queries import has_column

SIMILARITY_QUANTILES = (10, 25, 50, 75, 90)


@dataclass
class ShadowPairs:
    """One candidate's pairs, as arrays (NaN where a side has no value)."""

    candidate: str
    control_latency_ms: np.ndarray
    shadow_latency_ms: np.ndarray
    control_tokens: np.ndarray
    shadow_tokens: np.ndarray
    control_failed: np.ndarray
    shadow_failed: np.ndarray
    scores: list[dict[str, float]]  # of the pairs where both calls answered
    score_categories: list[str | None]  # the prompt language of each pair in ``scores``


def load_shadow_pairs(con: duckdb.DuckDBPyConnection, start: datetime | None = None, end: datetime | None = None,
                      glob: str | None = None) -> list[ShadowPairs]:
    """Return each candidate's shadow pairs in [start, end) (default: all of them) from the ``ev`` table
    (none before any shadow event); with ``glob`` (the experiment's lake files), each pair's prompt
    language from its exposure."""
    if not has_column(con, "candidate"):
        return []
    category = "NULL"
    if glob is not None:  # ev leaves the features out: read them for the shadowed requests only
        con.execute("""
            CREATE OR REPLACE TEMP TABLE shadow_category AS
            SELECT request_id, any_value(json_extract_string(features, '$.language')) AS category
            FROM read_parquet(?, union_by_name = true)
            WHERE type = 'exposure' AND request_id IN (SELECT request_id FROM ev WHERE type = 'shadow')
            GROUP BY request_id""", [glob])  # a parameter: a lake path may hold a quote
        category = "(SELECT category FROM shadow_category c WHERE c.request_id = ev.request_id)"
    where, params = ["type = 'shadow'"], []
    for cond, bound in (("ts >= ?", start), ("ts < ?", end)):
        if bound is not None:
            where.append(cond)
            params.append(bound)
    rows = con.execute(
        "SELECT candidate, latency_ms, shadow_latency_ms, completion_tokens, shadow_completion_tokens, "
        "error IS NOT NULL OR coalesce(status_code, 0) >= 400, "
        f"shadow_error IS NOT NULL OR coalesce(shadow_status_code, 0) >= 400, scores, {category} "
        f"FROM ev WHERE {' AND '.join(where)} ORDER BY candidate, ts", params).fetchall()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    pairs = []
    for candidate, rs in out.items():
        cols = list(zip(*rs, strict=True))

        def arr(i: int, cols: list[tuple[Any, ...]] = cols) -> np.ndarray:
            return np.array([np.nan if v is None else float(v) for v in cols[i]])

        scored = [(json.loads(s), c) for s, c in zip(cols[7], cols[8], strict=True) if s]
        pairs.append(ShadowPairs(candidate, arr(1), arr(2), arr(3), arr(4), np.array(cols[5], dtype=float),
                                 np.array(cols[6], dtype=float), [s for s, _ in scored], [c for _, c in scored]))
    return pairs


def category_breakdown(p: ShadowPairs, alpha: float = 0.05, min_pairs: int = 10) -> list[dict[str, Any]]:
    """Return per prompt language: pairs, median similarity and length ratio, and the one-sided Mann-Whitney
    U test of its similarity being lower than the other languages' (BH-adjusted; categories under
    ``min_pairs`` untested)."""
    sims: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for s, c in zip(p.scores, p.score_categories, strict=True):
        if c is None or "similarity" not in s:
            continue
        sims.setdefault(c, []).append(s["similarity"])
        if "length_ratio" in s:
            ratios.setdefault(c, []).append(s["length_ratio"])
    rows: list[dict[str, Any]] = []
    for c in sorted(sims, key=lambda k: -len(sims[k])):
        rest = [v for k, vs in sims.items() if k != c for v in vs]
        test = len(sims[c]) >= min_pairs and len(rest) >= min_pairs
        # one-sided: a category where the candidate agrees *less* with the control than elsewhere
        p_value = float(sps.mannwhitneyu(sims[c], rest, alternative="less").pvalue) if test else None
        rows.append({"category": c, "pairs": len(sims[c]), "similarity_median": float(np.median(sims[c])),
                     "length_ratio_median": float(np.median(ratios[c])) if ratios.get(c) else None,
                     "p_value": p_value})
    tested = [r for r in rows if r["p_value"] is not None]
    for r, adj in zip(tested, adjust_p_values([r["p_value"] for r in tested], "bh"), strict=True):
        r["p_adjusted"] = adj
        r["differs"] = adj < alpha
    return rows


def _both(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def summarise_shadow(p: ShadowPairs, alpha: float = 0.05, n_bootstrap: int = 1000, seed: int = 12345
                     ) -> dict[str, Any]:
    """Return one candidate's paired figures (candidate minus control; see the module)."""
    out: dict[str, Any] = {"candidate": p.candidate, "pairs": int(p.control_failed.size)}
    ok = (p.control_failed == 0) & (p.shadow_failed == 0)
    lat_a, lat_b = _both(p.control_latency_ms[ok], p.shadow_latency_ms[ok])
    tok_a, tok_b = _both(p.control_tokens[ok], p.shadow_tokens[ok])
    tests = {
        "latency_ms": (lat_a, lat_b, lambda a, b: wilcoxon_signed_rank(a, b, alpha, n_bootstrap, seed)),
        "completion_tokens": (tok_a, tok_b, lambda a, b: paired_bootstrap(a, b, n_samples=n_bootstrap, seed=seed,
                                                                          alpha=alpha)),
        "error_rate": (p.control_failed, p.shadow_failed, lambda a, b: mcnemar_exact(a, b, alpha)),
    }
    for name, (a, b, test) in tests.items():
        try:
            out[name] = asdict(test(a, b))
        except StatsError as exc:  # fewer than 2 pairs with both values
            out[name] = {"n": int(a.size), "skipped": str(exc)}
    if lat_a.size:
        out["latency_ms"].update(control_median=float(np.median(lat_a)), shadow_median=float(np.median(lat_b)))
    sim = np.array([s["similarity"] for s in p.scores if "similarity" in s])
    out["similarity"] = None if not sim.size else {
        "n": int(sim.size), "mean": float(sim.mean()),
        **{f"p{q}": float(v) for q, v in zip(SIMILARITY_QUANTILES, np.percentile(sim, SIMILARITY_QUANTILES),
                                             strict=True)}}
    ratios = np.array([s["length_ratio"] for s in p.scores if "length_ratio" in s])
    out["length_ratio_median"] = float(np.median(ratios)) if ratios.size else None
    refusals = [s for s in p.scores if "refusal_candidate" in s]
    out["refused_only_candidate"] = _share(
        sum(s["refusal_candidate"] == 1 and s["refusal_control"] == 0 for s in refusals), len(refusals))
    out["refused_only_control"] = _share(
        sum(s["refusal_control"] == 1 and s["refusal_candidate"] == 0 for s in refusals), len(refusals))
    json_ok = [s for s in p.scores if s.get("json_control") == 1]
    out["json_pairs"] = len(json_ok)
    out["broke_json"] = _share(sum(s.get("json_candidate") == 0 for s in json_ok), len(json_ok))
    out["categories"] = category_breakdown(p, alpha)
    return out


def shadow_summaries(con: duckdb.DuckDBPyConnection, start: datetime | None = None, end: datetime | None = None,
                     alpha: float = 0.05, glob: str | None = None) -> list[dict[str, Any]]:
    """Return :func:`summarise_shadow` of every candidate with shadow pairs in [start, end) (default: all;
    with ``glob``, the experiment's lake files, broken down by prompt language)."""
    return [summarise_shadow(p, alpha) for p in load_shadow_pairs(con, start, end, glob)]


def export_shadow_gauges(experiment: str, summaries: list[dict[str, Any]]) -> None:
    """Set the analyzer's shadow gauges (``splitwatch_shadow_*``) from :func:`summarise_shadow`'s figures."""
    from .. import metrics

    for s in summaries:
        c = s["candidate"]
        metrics.SHADOW_PAIRS_ANALYZED.labels(experiment, c).set(s["pairs"])
        for name in ("latency_ms", "completion_tokens", "error_rate"):
            r = s[name]
            for bound, key in (("estimate", "difference"), ("lower", "low"), ("upper", "high")):
                if r.get(key) is not None:
                    metrics.SHADOW_DIFFERENCE.labels(experiment, c, name, bound).set(r[key])
        if s["similarity"] is not None:
            for q in SIMILARITY_QUANTILES:
                metrics.SHADOW_SIMILARITY.labels(experiment, c, f"p{q}").set(s["similarity"][f"p{q}"])
        for what in ("refused_only_candidate", "broke_json"):
            if s[what] is not None:
                metrics.SHADOW_SHARE.labels(experiment, c, what).set(s[what])
