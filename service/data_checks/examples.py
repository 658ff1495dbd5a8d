"""Read the examples of a tuning or eval JSONL file, whatever its common shape.

- ``{"messages": [...]}`` (chat tuning, or an eval case): the input is every message but the last
  assistant one; the target that message, else the line's ``label`` or ``reference``;
- ``{"prompt": ..., "completion": ...}``: prompt, completion (or ``label`` / ``reference``);
- ``{"instruction", "input"?, "output"}`` (Alpaca): instruction and input, output;
- ``{"text": ...}``: the text, no target.

The label, when a line has one (``label``), is what conflicts are judged on; else the target. A line
that is not JSON or has none of these shapes is a bad line, listed by number; it is never dropped in
silence. Ids are the line's ``id`` or ``line-N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Example:
    """One example: its file, id and line, its input text, target text and label (None when absent)."""

    file: str
    id: str
    line: int
    input: str
    target: str | None
    label: str | None
    query: str = ""  # what the case asks: its last user message (chat), else its input

    @property
    def asked(self) -> str:
        """Return the case's own question: the last user message, without a system prompt the cases share."""
        return self.query or self.input

    @property
    def key(self) -> str:
        """Return ``file:id``, the example's name in a report."""
        return f"{self.file}:{self.id}"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _parse(obj: Any) -> tuple[str, str | None, str | None, str] | str:
    """Return (input, target, label, query) or a message saying why the line is not an example."""
    if not isinstance(obj, dict):
        return "must be a JSON object"
    label = obj.get("label")
    label = None if label is None else str(label)
    fallback = obj.get("reference") if isinstance(obj.get("reference"), str) else label
    if isinstance(obj.get("messages"), list):
        msgs = [m for m in obj["messages"] if isinstance(m, dict)]
        users = [_content(m) for m in msgs if m.get("role") == "user"]
        query = users[-1] if users else ""
        last_assistant = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        if last_assistant is not None and last_assistant == len(msgs) - 1:
            return (" \n".join(_content(m) for m in msgs[:last_assistant]), _content(msgs[last_assistant]), label,
                    query)
        return " \n".join(_content(m) for m in msgs), fallback, label, query
    if isinstance(obj.get("prompt"), str):
        target = obj.get("completion") if isinstance(obj.get("completion"), str) else fallback
        return obj["prompt"], target, label, ""
    if isinstance(obj.get("instruction"), str):
        text = obj["instruction"] + (f"\n{obj['input']}" if isinstance(obj.get("input"), str) and obj["input"] else "")
        return text, obj.get("output") if isinstance(obj.get("output"), str) else None, label, ""
    if isinstance(obj.get("text"), str):
        return obj["text"], None, label, ""
    return "no messages, prompt, instruction or text field"


def read_examples(path: str | Path) -> tuple[list[Example], list[str]]:
    """Return the file's examples and its bad lines ("line N: why"); raise OSError when it cannot be read."""
    p = Path(path)
    examples, bad = [], []
    for number, raw in enumerate(p.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            bad.append(f"{p.name} line {number}: not JSON ({exc})")
            continue
        parsed = _parse(obj)
        if isinstance(parsed, str):
            bad.append(f"{p.name} line {number}: {parsed}")
            continue
        ident = obj.get("id")
        ident = str(ident) if isinstance(ident, (str, int)) and not isinstance(ident, bool) else f"line-{number}"
        examples.append(Example(p.name, ident, number, *parsed))
    return examples, bad
