"""The shipper's text enrichment: an event's text sample (the start of its prompt or answer, never sent on)
becomes features (language, topic, code; refusal, empty, truncated) or a shadow pair's scores (chrF...)."""

from __future__ import annotations

from typing import Any

import orjson

from ..events import TEXT_KIND_ANSWER, TEXT_KIND_PAIR, TEXT_KIND_PROMPT, TEXT_KIND_STREAM, split_pair_sample
from ..features.answer import answer_features, stream_content
from ..features.answer_comparison import compare_answers
from ..features.prompt import LANGUAGES, shipper_features


def with_text_features(value: bytes, sample: bytes, languages: tuple[str, ...] = LANGUAGES) -> bytes:
    """Return the event JSON with the features of its text sample added; the sample itself is dropped.

    A prompt sample adds the shipper's prompt features to ``features`` (language, topic, code, ...);
    an answer sample sets ``answer`` (refusal, empty, truncated, chars); a shadow pair's sample sets
    ``scores`` (:func:`pair_scores`).
    """
    kind, body = sample[:1], sample[1:]
    event = orjson.loads(value)
    if kind == TEXT_KIND_PROMPT:
        event.setdefault("features", {}).update(shipper_features(body.decode(errors="replace"), languages))
    elif kind in (TEXT_KIND_ANSWER, TEXT_KIND_STREAM):
        event["answer"] = answer_features(event, body if kind == TEXT_KIND_STREAM else body.decode(errors="replace"))
    elif kind == TEXT_KIND_PAIR:
        event["scores"] = pair_scores(event, *split_pair_sample(body))
    else:
        return value
    return orjson.dumps(event)


def _sample_text(sample: bytes) -> str:
    kind, body = sample[:1], sample[1:]
    return stream_content(body)[0] if kind == TEXT_KIND_STREAM else body.decode("utf-8", "replace")


def pair_scores(event: dict[str, Any], control: bytes, candidate: bytes) -> dict[str, float] | None:
    """Return a shadow pair's comparison scores (:func:`..answer_comparison.compare_answers`), or None
    when either call failed (there is no pair of answers to compare)."""
    c, s = event["control"], event["shadow"]
    if c.get("error") or s.get("error") or not control or not candidate:
        return None
    return compare_answers(_sample_text(control), _sample_text(candidate), bool(event.get("json_requested")),
                           c.get("finish_reason"), s.get("finish_reason"))
