"""Domain rules a case's answer must follow, checked per case: terminology and compliance.

A test case may carry ``"checks"``::

    {"must_contain": ["refund policy"], "must_not_contain": ["guarantee"],
     "regex": "ticket #[0-9]{6}", "json_schema": {"type": "object", "required": ["intent"]}}

- ``must_contain`` / ``must_not_contain``: terms (a string or a list), matched case-insensitively
  after collapsing whitespace: every ``must_contain`` term present, no ``must_not_contain`` term.
- ``regex``: a pattern (or a list), each found somewhere in the answer (``re.search``; write
  ``(?i)`` for case-insensitive).
- ``json_schema``: the answer is a JSON document (a single surrounding Markdown code fence is
  allowed) that validates against the schema (jsonschema, the schema's own draft, Draft 2020-12
  when it names none).

A bad rule (a pattern that does not compile, a schema that is not one) makes the line a bad line
at load time, never a failed check at run time. A case passes its checks when every rule passes;
each kind is also counted on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

KINDS = ("must_contain", "must_not_contain", "regex", "json_schema")
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.S)


class CheckSpecError(ValueError):
    """A case's checks are malformed: ``field`` names the rule at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CaseChecks:
    """A case's rules: terms that must and must not appear, patterns, and a JSON schema (as JSON text)."""

    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    json_schema: str | None = None

    def kinds(self) -> list[str]:
        """Return the kinds of rule this case has, in :data:`KINDS` order."""
        return [k for k in KINDS if getattr(self, k)]


def _strings(value: Any, field: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise CheckSpecError(field, "must be a non-empty string or a list of them")
    return tuple(items)


def parse_checks(value: Any) -> CaseChecks | None:
    """Return the case's :class:`CaseChecks` (None when it has none); raise CheckSpecError naming the bad rule."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise CheckSpecError("checks", f"must be an object with some of {list(KINDS)}")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise CheckSpecError(f"checks.{unknown[0]}", f"unknown rule; rules: {list(KINDS)}")
    found: dict[str, Any] = {}
    for kind in ("must_contain", "must_not_contain", "regex"):
        if kind in value:
            found[kind] = _strings(value[kind], f"checks.{kind}")
    for i, pattern in enumerate(found.get("regex", ())):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CheckSpecError(f"checks.regex[{i}]", f"does not compile: {exc}") from None
    if "json_schema" in value:
        schema = value["json_schema"]
        if not isinstance(schema, (dict, bool)):
            raise CheckSpecError("checks.json_schema", "must be a JSON Schema (an object)")
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise CheckSpecError("checks.json_schema", f"is not a valid schema: {exc.message}") from None
        found["json_schema"] = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    return CaseChecks(**found)


def _folded(text: str) -> str:
    return " ".join(text.casefold().split())


@cache
def _validator(schema_json: str) -> Any:
    from jsonschema.validators import validator_for

    schema = orjson.loads(schema_json)
    return validator_for(schema)(schema)


def json_document(answer: str) -> Any:
    """Return the JSON value the answer holds (inside one Markdown code fence, or bare); raise ValueError if none."""
    m = _FENCE.match(answer)
    try:
        return orjson.loads((m.group(1) if m else answer).strip())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def check_answer(checks: CaseChecks, answer: str) -> dict[str, bool]:
    """Return, per kind of rule the case has, whether the answer passes every rule of that kind."""
    folded = _folded(answer)
    out: dict[str, bool] = {}
    if checks.must_contain:
        out["must_contain"] = all(_folded(t) in folded for t in checks.must_contain)
    if checks.must_not_contain:
        out["must_not_contain"] = not any(_folded(t) in folded for t in checks.must_not_contain)
    if checks.regex:
        out["regex"] = all(re.search(p, answer) is not None for p in checks.regex)
    if checks.json_schema is not None:
        try:
            out["json_schema"] = _validator(checks.json_schema).is_valid(json_document(answer))
        except ValueError:
            out["json_schema"] = False
    return out
