"""Scores that compare two answers to the same request: the shadow pair's (in the event shipper) and
``splitwatch eval``'s similarity figures share them, so both mean the same thing."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from .answer import is_refusal


@cache
def chrf_metric() -> Any:
    """Return the sacrebleu chrF metric (made once)."""
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(answer: str, reference: str) -> float:
    """Return sacrebleu's sentence chrF (0-100) of ``answer`` against one ``reference``."""
    return float(chrf_metric().sentence_score(answer, [reference]).score)


def is_json(text: str) -> bool:
    """Return True when ``text`` (surrounding whitespace and a Markdown code fence ignored) parses as JSON."""
    t = text.strip()
    if t.startswith("```"):
        t = t.strip("`").removeprefix("json").strip()
    try:
        orjson.loads(t)
    except orjson.JSONDecodeError:
        return False
    return True


def compare_answers(control: str, candidate: str, json_requested: bool, control_finish: str | None,
                    candidate_finish: str | None) -> dict[str, float]:
    """Return the pair's scores: ``similarity`` (chrF of the candidate against the control, 0-100),
    ``length_ratio`` (candidate characters over control characters; absent when the control is empty),
    ``refusal_control``, ``refusal_candidate``, ``same_finish`` and, when JSON was asked for,
    ``json_control`` and ``json_candidate`` (1.0 when the answer parses)."""
    out = {"similarity": chrf(candidate, control),
           "refusal_control": float(is_refusal(control)), "refusal_candidate": float(is_refusal(candidate)),
           "same_finish": float(control_finish == candidate_finish)}
    if control:
        out["length_ratio"] = len(candidate) / len(control)
    if json_requested:
        out["json_control"], out["json_candidate"] = float(is_json(control)), float(is_json(candidate))
    return out
