"""Features of a model's answer, computed in the event shipper from text that never leaves memory.

The worker hands the shipper the start of the answer (the completion's text, or the first bytes
of its SSE stream); the shipper adds ``answer`` to the response event (docs/features.md) and drops
the text. Output drift per arm (drift/output.py) watches these.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

ANSWER_SAMPLE_CHARS = 2000
"""The shipper judges an answer by this much of its start: where a refusal says what it is."""
STREAM_SAMPLE_BYTES = 16384
"""The first bytes of an SSE answer the worker keeps for the shipper (about 100 chunks)."""

# A refusal says so in its first sentences. English phrasings of the common chat models; a refusal
# in another language is not recognised (docs/features.md).
_Q = r"['\u2019]"  # a straight or a typographic apostrophe
_CANT = (r"(?:can ?not|can" + _Q + r"?t|am (?:not )?(?:able|unable)|won" + _Q
         + r"?t|will not|must decline|am not comfortable)")
_REFUSAL = re.compile(
    r"^\W*(?:(?:i" + _Q + r"?m|i am) (?:really |very |so )?(?:sorry|afraid)\b[^.!?\n]{0,80}?\b" + _CANT
    + r"|(?:sorry|unfortunately)\b[,.!]?[^.!?\n]{0,40}?\bi " + _CANT
    + r"|i " + _CANT + r" (?:help|assist|provide|comply|do that|answer|fulfil|support|share|create|generate|give)"
    + r"|as an ai\b[^.!?\n]{0,80}?\b(?:can ?not|can" + _Q + r"?t|unable|don" + _Q + r"?t|do not)"
    + r"|i must (?:decline|refuse)"
    + r"|i (?:have to|need to) (?:decline|refuse))",
    re.I)


def is_refusal(text: str) -> bool:
    """Return True when the answer opens by declining to help (English phrasings)."""
    return _REFUSAL.search(text[:ANSWER_SAMPLE_CHARS].strip()) is not None


def completion_content(obj: Any) -> tuple[str | None, bool]:
    """Return (text of the first choice, has tool calls) of a non-streamed completion or chat completion.

    A chat message with ``refusal`` set (OpenAI structured outputs) and no content gives its refusal text.
    """
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, False
    c = choices[0]
    msg = c.get("message")
    if isinstance(msg, dict):
        content = msg.get("content")
        if not isinstance(content, str) and isinstance(msg.get("refusal"), str):
            content = msg["refusal"]
        return (content if isinstance(content, str) else None), bool(msg.get("tool_calls"))
    return (c.get("text") if isinstance(c.get("text"), str) else None), False


def finish_reason_of(obj: Any) -> str | None:
    """Return the first choice's ``finish_reason`` of a completion, or None."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def stream_content(head: bytes) -> tuple[str, bool, bool]:
    """Return (text so far, has tool calls, the stream ended within ``head``) of the start of an SSE answer."""
    parts: list[str] = []
    tools = ended = False
    for line in head.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            ended = True
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # the last line of a cut head
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            continue
        c = choices[0]
        delta = c.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            elif isinstance(delta.get("refusal"), str):
                parts.append(delta["refusal"])
            tools = tools or bool(delta.get("tool_calls"))
        elif isinstance(c.get("text"), str):
            parts.append(c["text"])
    return "".join(parts), tools, ended


def answer_features(event: dict[str, Any], sample: str | bytes) -> dict[str, float] | None:
    """Return the ``answer`` features of a response event from its answer sample, or None for a failure.

    ``refusal`` (opens by declining), ``empty`` (no text and no tool call), ``truncated``
    (``finish_reason`` "length"), ``chars`` (characters of the answer; only when the whole answer was seen).
    """
    if int(event.get("status_code") or 0) >= 400 or event.get("error"):
        return None
    if event.get("stream"):
        head = sample if isinstance(sample, bytes) else sample.encode()
        text, tools, whole = stream_content(head)
    else:
        text = sample if isinstance(sample, str) else sample.decode("utf-8", "replace")
        tools, whole = event.get("finish_reason") == "tool_calls", len(text) < ANSWER_SAMPLE_CHARS
    empty = not text.strip() and not tools and event.get("finish_reason") != "tool_calls"
    out = {"refusal": 1.0 if is_refusal(text) else 0.0, "empty": 1.0 if empty else 0.0,
           "truncated": 1.0 if event.get("finish_reason") == "length" else 0.0}
    if whole:
        out["chars"] = float(len(text))
    return out
