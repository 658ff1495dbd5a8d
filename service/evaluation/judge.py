"""LLM-as-judge: a judge model compares the control's answer and a candidate's on each case, pairwise,
twice with the order swapped, to cancel position bias.

Per case and candidate arm, the judge sees the request (and the expected answer, when the test set
has one) and the two answers as "Answer 1" and "Answer 2", and replies ``1``, ``2`` or ``tie``.
Order 0 shows the control first, order 1 the candidate first. Each valid judgement gives the
candidate 1 (it won), 0.5 (tie) or 0 (it lost); the case's score is the mean of its valid
judgements, and the win rate the mean over cases (0.5: as good as the control). A case whose two
judgements name different winners once the order is undone is *order-inconsistent*: their share
measures the judge's position bias. The win rate's interval and p-value (against 0.5) come from
the same paired bootstrap as the other metrics. A reply that names no winner is counted as invalid
and left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..config import ArmUpstreamConfig, ExperimentConfig
from .dataset import EvalCase
from .runner import Job
from .store import CallResult

JUDGE_PREFIX = "judge/"
SYSTEM = ("You are an impartial judge. Compare two answers to the same request and decide which one serves the "
          "user better: correct, complete, relevant and clear. Ignore which answer comes first and their length "
          "as such. Reply with exactly one of: 1, 2, tie.")
_REPLY = re.compile(r"^\W*(1|2|tie)\b", re.IGNORECASE)


def judge_key(arm: str) -> str:
    """Return the store's arm field for judgements of ``arm`` against the control."""
    return JUDGE_PREFIX + arm


def request_text(case: EvalCase) -> str:
    """Return the case's request as the judge reads it: the prompt, or each message as ``role: content``."""
    if case.messages is None:
        return case.prompt or ""
    parts = []
    for m in case.messages:
        content = m.get("content")
        text = content if isinstance(content, str) else orjson.dumps(content).decode()
        parts.append(f"{m.get('role')}: {text}")
    return "\n".join(parts)


def judge_prompt(case: EvalCase, first: str, second: str) -> str:
    """Return the judge's user message: the request, the expected answer if any, the two answers."""
    expected = case.label if case.label is not None else case.reference
    ref = f"[Expected answer]\n{expected}\n\n" if expected is not None else ""
    return (f"[Request]\n{request_text(case)}\n\n{ref}[Answer 1]\n{first}\n\n[Answer 2]\n{second}\n\n"
            "Which answer is better? Reply 1, 2 or tie.")


def plan_judge_jobs(exp: ExperimentConfig, cases: list[EvalCase], results: dict[tuple[str, str, int], CallResult],
                    judge: ArmUpstreamConfig) -> list[Job]:
    """Return the judge calls: per case whose first repeat every arm answered, per candidate arm, both orders."""
    control = exp.arms[0].name
    jobs = []
    for case in cases:
        a = results.get((case.id, control, 0))
        if a is None or a.answer is None:
            continue
        for arm in exp.arms[1:]:
            b = results.get((case.id, arm.name, 0))
            if b is None or b.answer is None:
                continue
            for order, (first, second) in enumerate(((a.answer, b.answer), (b.answer, a.answer))):
                body: dict[str, Any] = {"model": judge.model, "temperature": 0, "max_tokens": 5, "stream": False,
                                        "messages": [{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": judge_prompt(case, first, second)}]}
                jobs.append(Job((case.id, judge_key(arm.name), order), judge, "/chat/completions", orjson.dumps(body)))
    return jobs


def parse_verdict(reply: str | None) -> str | None:
    """Return ``"1"``, ``"2"`` or ``"tie"`` from the judge's reply, or None when it names none."""
    m = _REPLY.match(reply or "")
    return m.group(1).lower() if m else None


def _candidate_score(verdict: str, order: int) -> float:
    if verdict == "tie":
        return 0.5
    candidate_first = order == 1
    return 1.0 if (verdict == "1") == candidate_first else 0.0


@dataclass(frozen=True)
class JudgeScores:
    """A candidate arm's judged cases: the per-case scores, and counts of what the judge did."""

    scores: np.ndarray
    judged_cases: int
    inconsistent: int  # cases with two valid judgements naming different winners
    both_valid: int
    invalid: int  # judge replies naming no winner, or failed judge calls

    @property
    def inconsistent_share(self) -> float | None:
        """Return the share of order-inconsistent cases among those with two valid judgements."""
        return self.inconsistent / self.both_valid if self.both_valid else None


def judge_scores(results: dict[tuple[str, str, int], CallResult], case_ids: list[str], arm: str) -> JudgeScores:
    """Return the candidate's per-case scores from the stored judgements (cases in ``case_ids`` order)."""
    scores, inconsistent, both, invalid = [], 0, 0, 0
    for cid in case_ids:
        per_order = []
        for order in (0, 1):
            r = results.get((cid, judge_key(arm), order))
            if r is None:
                continue
            verdict = parse_verdict(r.answer) if r.error is None else None
            if verdict is None:
                invalid += 1
                continue
            per_order.append(_candidate_score(verdict, order))
        if len(per_order) == 2:
            both += 1
            inconsistent += per_order[0] != per_order[1]
        if per_order:
            scores.append(float(np.mean(per_order)))
    return JudgeScores(np.array(scores), len(scores), inconsistent, both, invalid)
