"""The paired statistics of shadow traffic: each mirrored request answered by the control and by the
candidate, compared pair by pair (``shadow`` events in the lake, docs/shadow.md).

Per candidate: the paired difference in latency (Wilcoxon's signed-rank test, with the bootstrap
interval of the mean difference), in completion tokens (paired bootstrap) and in errors (exact
McNemar), from ``splitwatch.stats.paired``; the distribution of the answers' similarity (chrF,
quantiles); the median length ratio; and the shares of pairs where the candidate refused and the
control did not, and where JSON was asked for, the control's answer parsed and the candidate's did
not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb
import numpy as np

from ...stats.errors import StatsError
from ...stats.paired import mcnemar_exact, paired_bootstrap, wilcoxon_signed_rank

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


def load_shadow_pairs(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> list[ShadowPairs]:
    """Return each candidate's shadow pairs in [start, end) from the ``ev`` table (none before any shadow event)."""
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'ev' "
                      "AND column_name = 'candidate'").fetchone()
    if not has or not has[0]:
        return []
    rows = con.execute(
        "SELECT candidate, latency_ms, shadow_latency_ms, completion_tokens, shadow_completion_tokens, "
        "error IS NOT NULL OR coalesce(status_code, 0) >= 400, "
        "shadow_error IS NOT NULL OR coalesce(shadow_status_code, 0) >= 400, scores "
        "FROM ev WHERE type = 'shadow' AND ts >= ? AND ts < ? ORDER BY candidate, ts", [start, end]).fetchall()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    pairs = []
    for candidate, rs in out.items():
        cols = list(zip(*rs, strict=True))

        def arr(i: int, cols: list[tuple[Any, ...]] = cols) -> np.ndarray:
            return np.array([np.nan if v is None else float(v) for v in cols[i]])

        pairs.append(ShadowPairs(candidate, arr(1), arr(2), arr(3), arr(4), np.array(cols[5], dtype=float),
                                 np.array(cols[6], dtype=float), [json.loads(s) for s in cols[7] if s]))
    return pairs


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
    return out


def shadow_summaries(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
                     alpha: float = 0.05) -> list[dict[str, Any]]:
    """Return :func:`summarise_shadow` of every candidate with shadow pairs in [start, end)."""
    return [summarise_shadow(p, alpha) for p in load_shadow_pairs(con, start, end)]
