"""The judge's rubric, people's ratings, and whether the judge can be trusted.

**Rubric** (with ``--judge``): besides the pairwise preference (:mod:`.judge`), the judge rates each
arm's answer on its own, 1 to 5, on :data:`DIMENSIONS`, replying with a JSON object. A reply that
is not one (or a score outside 1-5) is invalid and counted. The ratings are compared between arms
per case (Wilcoxon's signed-rank test: they are ordinal).

**People** (``--human FILE``): JSONL lines ``{"id": case, "arm": arm, "relevance": 4, ...}`` (any of
the dimensions, integers 1-5). A line naming an unknown case or arm, or a bad score, is a bad line
listed in the report, never dropped in silence. People's ratings of two arms on the same cases are
compared like the judge's (``human_<dimension>``).

**Agreement**: on the (case, arm) pairs both rated, per dimension, the quadratic-weighted Cohen's
kappa (scikit-learn) and Spearman's rho (scipy), each with a percentile bootstrap interval over
the pairs, and the judge's leniency (its mean rating minus people's). The judge is *trusted* on a
dimension when at least :data:`MIN_PAIRS` pairs were rated, kappa is at least
:data:`KAPPA_TRUSTED` with its interval's lower end at least :data:`KAPPA_FLOOR`, and its leniency
is under :data:`MAX_LENIENCY` points. Its pairwise preference is trusted when its two orders
disagree on at most :data:`MAX_ORDER_INCONSISTENT` of the cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..config import ArmUpstreamConfig, ExperimentConfig
from .dataset import BadLine, EvalCase
from .judge import request_text
from .runner import Job
from .store import CallResult

DIMENSIONS = ("relevance", "fluency", "factual_accuracy", "diversity")
RUBRIC_PREFIX = "rubric/"
MIN_PAIRS = 30
KAPPA_TRUSTED = 0.6
KAPPA_FLOOR = 0.4
MAX_LENIENCY = 0.5
MAX_ORDER_INCONSISTENT = 0.2
RUBRIC_SYSTEM = ("You are a strict evaluator. Rate the answer to the request from 1 (very poor) to 5 (excellent) on: "
                 "relevance (it addresses the request), fluency (well-formed language), factual_accuracy (its "
                 "statements are correct; use the expected answer when given), diversity (varied, non-repetitive "
                 'wording). Reply with JSON only: {"relevance": n, "fluency": n, "factual_accuracy": n, '
                 '"diversity": n}')
_JSON = re.compile(r"\{.*\}", re.S)


def rubric_key(arm: str) -> str:
    """Return the store's arm field for the judge's rubric ratings of ``arm``'s answers."""
    return RUBRIC_PREFIX + arm


def rubric_prompt(case: EvalCase, answer: str) -> str:
    """Return the judge's user message: the request, the expected answer if any, and the one answer."""
    expected = case.label if case.label is not None else case.reference
    ref = f"[Expected answer]\n{expected}\n\n" if expected is not None else ""
    return f"[Request]\n{request_text(case)}\n\n{ref}[Answer]\n{answer}\n\nRate the answer (JSON only)."


def plan_rubric_jobs(exp: ExperimentConfig, cases: list[EvalCase], results: dict[tuple[str, str, int], CallResult],
                     judge: ArmUpstreamConfig) -> list[Job]:
    """Return the rubric calls: each arm's first answer to each case that every arm answered."""
    jobs = []
    for case in cases:
        answers = {a.name: results.get((case.id, a.name, 0)) for a in exp.arms}
        if any(r is None or r.answer is None for r in answers.values()):
            continue
        for arm, r in answers.items():
            body = {"model": judge.model, "temperature": 0, "max_tokens": 60, "stream": False,
                    "messages": [{"role": "system", "content": RUBRIC_SYSTEM},
                                 {"role": "user", "content": rubric_prompt(case, r.answer or "")}]}
            jobs.append(Job((case.id, rubric_key(arm), 0), judge, "/chat/completions", orjson.dumps(body)))
    return jobs


def parse_rubric(reply: str | None) -> dict[str, int] | None:
    """Return the judge's four ratings (1-5) from its reply, or None when the reply is not a complete rubric."""
    m = _JSON.search(reply or "")
    if m is None:
        return None
    try:
        obj = orjson.loads(m.group(0))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    out = {}
    for d in DIMENSIONS:
        v = obj.get(d)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 1 <= v <= 5:
            return None
        out[d] = int(v)
    return out


def load_human_ratings(path: str | Path, case_ids: set[str], arms: set[str]
                       ) -> tuple[dict[tuple[str, str], dict[str, int]], list[BadLine]]:
    """Return people's ratings by (case, arm) and the file's bad lines; raise OSError when it cannot be read."""
    ratings: dict[tuple[str, str], dict[str, int]] = {}
    bad: list[BadLine] = []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            bad.append(BadLine(number, "(line)", f"not JSON ({exc})"))
            continue
        problem = _human_problem(obj, case_ids, arms)
        if problem:
            bad.append(BadLine(number, *problem))
            continue
        key = (str(obj["id"]), obj["arm"])
        if key in ratings:
            bad.append(BadLine(number, "id", f"case {key[0]!r} and arm {key[1]!r} are rated twice"))
            continue
        ratings[key] = {d: int(obj[d]) for d in DIMENSIONS if d in obj}
    return ratings, bad


def _human_problem(obj: Any, case_ids: set[str], arms: set[str]) -> tuple[str, str] | None:
    if not isinstance(obj, dict):
        return "(line)", "must be a JSON object"
    unknown = sorted(set(obj) - {"id", "arm", "rater", *DIMENSIONS})
    if unknown:
        return unknown[0], f"unknown field; expected id, arm, rater and some of {list(DIMENSIONS)}"
    if str(obj.get("id")) not in case_ids:
        return "id", f"{obj.get('id')!r} is not a case of the dataset"
    if obj.get("arm") not in arms:
        return "arm", f"{obj.get('arm')!r} is not an arm of the experiment ({sorted(arms)})"
    dims = [d for d in DIMENSIONS if d in obj]
    if not dims:
        return "(line)", f"rates none of {list(DIMENSIONS)}"
    for d in dims:
        v = obj[d]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
            return d, f"must be an integer from 1 to 5, got {v!r}"
    return None


@dataclass(frozen=True)
class Agreement:
    """The judge against people on one dimension: pairs rated by both, kappa, Spearman, leniency, trust."""

    dimension: str
    pairs: int
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None
    spearman: float | None
    spearman_low: float | None
    spearman_high: float | None
    leniency: float | None  # the judge's mean rating minus people's, on the same pairs
    trusted: bool
    why: str


def _kappa(judge: np.ndarray, human: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    if np.all(judge == judge[0]) and np.all(human == human[0]):
        return 1.0 if judge[0] == human[0] else 0.0
    return float(cohen_kappa_score(judge, human, weights="quadratic", labels=[1, 2, 3, 4, 5]))


def _spearman(judge: np.ndarray, human: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.all(judge == judge[0]) or np.all(human == human[0]):
        return 0.0  # a constant rater ranks nothing (scipy would return nan)
    return float(spearmanr(judge, human).statistic)


def agreement(dimension: str, judge: np.ndarray, human: np.ndarray, n_samples: int = 2000, seed: int = 12345
              ) -> Agreement:
    """Return the judge's agreement with people on ``dimension`` over the pairs both rated (aligned arrays)."""
    keep = np.isfinite(judge) & np.isfinite(human)
    j, h = judge[keep].astype(int), human[keep].astype(int)
    n = int(j.size)
    if n < 2:
        return Agreement(dimension, n, None, None, None, None, None, None, None, False,
                         f"{n} pairs rated by both the judge and people (needs {MIN_PAIRS})")
    kappa, rho, lenient = _kappa(j, h), _spearman(j, h), float(j.mean() - h.mean())
    idx = np.random.default_rng(seed).choice(n, size=(n_samples, n), replace=True)
    kappas = np.array([_kappa(j[i], h[i]) for i in idx])
    rhos = np.array([_spearman(j[i], h[i]) for i in idx])
    k_low, k_high = (float(x) for x in np.quantile(kappas, [0.025, 0.975]))
    r_low, r_high = (float(x) for x in np.quantile(rhos, [0.025, 0.975]))
    reasons = []
    if n < MIN_PAIRS:
        reasons.append(f"only {n} pairs rated by both (needs {MIN_PAIRS})")
    if kappa < KAPPA_TRUSTED or k_low < KAPPA_FLOOR:
        reasons.append(f"weighted kappa {kappa:.2f} [{k_low:.2f}, {k_high:.2f}] (needs {KAPPA_TRUSTED} with the "
                       f"interval above {KAPPA_FLOOR})")
    if abs(lenient) >= MAX_LENIENCY:
        reasons.append(f"it rates {abs(lenient):.2f} points {'above' if lenient > 0 else 'below'} people on average")
    why = "; ".join(reasons) if reasons else (f"weighted kappa {kappa:.2f} [{k_low:.2f}, {k_high:.2f}], Spearman "
                                              f"{rho:.2f}, leniency {lenient:+.2f} on {n} pairs")
    return Agreement(dimension, n, kappa, k_low, k_high, rho, r_low, r_high, lenient, not reasons, why)
