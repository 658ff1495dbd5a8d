"""An offline test set: JSONL lines ``{"id"?, "messages": [...]}`` or ``{"id"?, "prompt": "..."}``,
each with an optional ``"reference"`` (the expected text) or ``"label"`` (the expected class, or a
number for regression), and optionally ``"metadata"`` (slices), ``"checks"`` (domain rules on the
answer) and ``"code_tests"`` (Python tests the generated code must pass).

A bad line is reported by its line number and field and left out of the run, never silently: the
run's report lists every one. The task is what the lines carry: ``classification`` (every line has a
label), ``regression`` (every label is a JSON number, with non-integers or more than
:data:`MAX_INTEGER_CLASSES` distinct values), ``generation`` (every line has a reference), ``code``
(every line has code tests) or ``open`` (neither: latency, tokens and
stability only). ``--task`` sets it; then a line without the field the task needs is a bad line.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .checks import CaseChecks, CheckSpecError, parse_checks

TASKS = ("classification", "regression", "generation", "code", "open")
MAX_INTEGER_CLASSES = 20
"""Integer labels with at most this many distinct values are classes (0/1, star ratings), not numbers."""
MAX_METADATA_KEYS = 20
SUPPORT_INTENTS = Path(__file__).parent / "datasets" / "support_intents.jsonl"
"""The shipped test set: 220 customer-support messages, each labelled with one of 10 intents."""
MAX_ID_CHARS = 200
FIELDS = ("id", "messages", "prompt", "reference", "label", "metadata", "checks", "code_tests")
ROLES = ("system", "user", "assistant", "developer", "tool")


class DatasetError(ValueError):
    """The dataset cannot be used at all (unreadable, empty, or no valid line)."""


@dataclass(frozen=True)
class EvalCase:
    """One test case: its id, the request's ``messages`` (chat) or ``prompt`` (completion), and the
    expected ``reference`` text or ``label``."""

    id: str
    line: int
    messages: tuple[dict[str, Any], ...] | None
    prompt: str | None
    reference: str | None
    label: str | None
    target: float | None = None  # the label as a number (a JSON number, or any label under --task regression)
    metadata: tuple[tuple[str, str], ...] = ()  # (key, value) pairs, values as text: the case's slices
    checks: CaseChecks | None = None
    code_tests: str | None = None

    def request_body(self) -> dict[str, Any]:
        """Return the request's content fields: ``{"messages": [...]}`` or ``{"prompt": "..."}``."""
        return {"messages": list(self.messages)} if self.messages is not None else {"prompt": self.prompt}

    def question(self) -> str:
        """Return what the case asks: its last user message (chat), or its prompt."""
        if self.messages is None:
            return self.prompt or ""
        users = [m for m in self.messages if m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        return content if isinstance(content, str) else " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict))

    @property
    def path(self) -> str:
        """Return the OpenAI path this case is sent to."""
        return "/chat/completions" if self.messages is not None else "/completions"


@dataclass(frozen=True)
class BadLine:
    """A line left out of the run: its number, the field at fault and why."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Dataset:
    """The valid cases, the bad lines, the task, and the file's SHA-256 (a resumed run must match it)."""

    path: Path
    cases: list[EvalCase]
    bad_lines: list[BadLine]
    task: str
    task_inferred: bool
    sha256: str

    def describe(self) -> str:
        """Return one sentence saying what the dataset holds and which task it was taken for."""
        how = "inferred from the lines" if self.task_inferred else "set by --task"
        bad = f", {len(self.bad_lines)} bad lines left out" if self.bad_lines else ""
        labels = sorted({c.label for c in self.cases if c.label is not None})
        extra = f" ({len(labels)} labels)" if self.task == "classification" else ""
        if self.task == "classification" and all(c.target is not None for c in self.cases):
            extra += " (integer labels taken as classes; --task regression reads them as numbers)"
        return f"{self.path.name}: {len(self.cases)} cases{bad}; task {self.task}{extra}, {how}"

    def metadata_keys(self) -> list[str]:
        """Return the metadata keys any case carries, sorted (each one slices the cases)."""
        return sorted({k for c in self.cases for k, _ in c.metadata})

    def labels(self) -> list[str]:
        """Return the dataset's labels, sorted."""
        return sorted({c.label for c in self.cases if c.label is not None})


def _metadata(value: Any, line: int) -> tuple[tuple[tuple[str, str], ...], BadLine | None]:
    if value is None:
        return (), None
    if not isinstance(value, dict):
        return (), BadLine(line, "metadata", f"must be an object of key: value, got {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        return (), BadLine(line, "metadata", f"at most {MAX_METADATA_KEYS} keys, got {len(value)}")
    out = []
    for k, v in sorted(value.items()):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or (isinstance(v, str) and not v.strip()):
            return (), BadLine(line, f"metadata.{k}", "must be a non-empty string or a number (a slice's value)")
        out.append((str(k), str(v)))
    return tuple(out), None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text_field(obj: dict[str, Any], name: str, line: int) -> tuple[str | None, BadLine | None]:
    value = obj.get(name)
    if value is None:
        return None, None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "label":
        value = str(value)  # numeric class labels are common (0/1)
    if not isinstance(value, str) or not value.strip():
        return None, BadLine(line, name, f"must be a non-empty string, got {type(value).__name__}")
    return value, None


def _messages(value: Any, line: int) -> tuple[tuple[dict[str, Any], ...] | None, BadLine | None]:
    if not isinstance(value, list) or not value:
        return None, BadLine(line, "messages", "must be a non-empty list of {role, content} objects")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return None, BadLine(line, f"messages[{i}]", "must be an object with role and content")
        if m.get("role") not in ROLES:
            return None, BadLine(line, f"messages[{i}].role", f"must be one of {list(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), (str, list)):
            return None, BadLine(line, f"messages[{i}].content", "must be a string or a list of content parts")
    return tuple(value), None


def _object(raw: bytes, line: int) -> dict[str, Any] | BadLine:
    """Return the line's JSON object with known fields only, or why it is not one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(line, "(line)", f"not JSON ({exc})")
    if not isinstance(obj, dict):
        return BadLine(line, "(line)", f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        return BadLine(line, unknown[0], f"unknown field; expected {', '.join(FIELDS)}")
    return obj


def _case_id(obj: dict[str, Any], line: int) -> str | BadLine:
    """Return the case's id (``line-N`` when absent; a number as text), or why it is not valid."""
    case_id = obj.get("id", f"line-{line}")
    if isinstance(case_id, int) and not isinstance(case_id, bool):
        case_id = str(case_id)
    if not isinstance(case_id, str) or not case_id or len(case_id) > MAX_ID_CHARS:
        return BadLine(line, "id", f"must be a string of 1 to {MAX_ID_CHARS} characters")
    return case_id


def _parse_line(raw: bytes, line: int) -> EvalCase | BadLine:
    obj = _object(raw, line)
    if isinstance(obj, BadLine):
        return obj
    case_id = _case_id(obj, line)
    if isinstance(case_id, BadLine):
        return case_id
    has_messages, has_prompt = "messages" in obj, "prompt" in obj
    if has_messages == has_prompt:
        return BadLine(line, "messages", "a line needs exactly one of messages or prompt")
    messages = prompt = None
    if has_messages:
        messages, bad = _messages(obj["messages"], line)
        if bad:
            return bad
    else:
        prompt, bad = _text_field(obj, "prompt", line)
        if bad or prompt is None:
            return bad or BadLine(line, "prompt", "must be a non-empty string")
    reference, bad = _text_field(obj, "reference", line)
    if bad:
        return bad
    label, bad = _text_field(obj, "label", line)
    if bad:
        return bad
    target = _number(obj["label"]) if isinstance(obj.get("label"), (int, float)) else None
    metadata, bad = _metadata(obj.get("metadata"), line)
    if bad:
        return bad
    try:
        checks = parse_checks(obj.get("checks"))
    except CheckSpecError as exc:
        return BadLine(line, exc.field, exc.message)
    code_tests, bad = _text_field(obj, "code_tests", line)
    if bad:
        return bad
    return EvalCase(case_id, line, messages, prompt, reference, label, target, metadata, checks, code_tests)


def _infer_task(cases: list[EvalCase]) -> str:
    if cases and all(c.code_tests is not None for c in cases):
        return "code"
    if cases and all(c.target is not None for c in cases):
        targets = {c.target for c in cases}
        if any(t != int(t) for t in targets if t is not None) or len(targets) > MAX_INTEGER_CLASSES:
            return "regression"
    if cases and all(c.label is not None for c in cases):
        return "classification"
    if cases and all(c.reference is not None for c in cases):
        return "generation"
    return "open"


def load_dataset(path: str | Path, task: str | None = None) -> Dataset:
    """Return the :class:`Dataset` read from the JSONL file at ``path``.

    Raises :class:`DatasetError` when the file cannot be read or holds no valid case; bad lines are
    returned in ``bad_lines``, not raised.
    """
    if task is not None and task not in TASKS:
        raise DatasetError(f"--task must be one of {list(TASKS)}, got {task!r}")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the dataset {p}: {exc.strerror or exc}") from None
    cases: list[EvalCase] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line, number)
        if isinstance(parsed, BadLine):
            bad.append(parsed)
        elif parsed.id in seen:
            bad.append(BadLine(number, "id", f"{parsed.id!r} is already the id of line {seen[parsed.id]}"))
        else:
            seen[parsed.id] = number
            cases.append(parsed)
    inferred = task is None
    chosen = task or _infer_task(cases)
    needed = {"classification": "label", "regression": "label", "generation": "reference",
              "code": "code_tests"}.get(chosen)
    if needed:
        kept = []
        for c in cases:
            if getattr(c, needed) is None:
                bad.append(BadLine(c.line, needed, f"missing; the task is {chosen}"))
            elif chosen == "regression" and _number(c.label) is None:
                bad.append(BadLine(c.line, "label", f"must be a number for the task regression, got {c.label!r}"))
            else:
                kept.append(c if chosen != "regression" else replace(c, target=_number(c.label)))
        cases = kept
    if not cases:
        detail = f"; first problem: {bad[0]}" if bad else ""
        raise DatasetError(f"{p}: no valid test case{detail}")
    bad.sort(key=lambda b: b.line)
    return Dataset(p, cases, bad, chosen, inferred, hashlib.sha256(raw).hexdigest())
