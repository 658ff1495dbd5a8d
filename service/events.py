"""The event schema on the Kafka topic (docs/events.md): exposure, response, outcome.

Producers build events with these models; consumers (analyzer, drift) parse them
with :func:`parse_event`. Prompt and completion text never appears unless the
config sets ``proxy.log_text: true`` (then in the optional ``text`` fields).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

SCHEMA_VERSION = 1


def now_utc() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))  # the version nibble and the variant bits
_UUID4_SET = (0x4 << 76) | (0x2 << 62)  # version 4, variant RFC 4122


def new_uuid4() -> str:
    """Return a random UUID (version 4) as its canonical string: ``str(uuid.uuid4())`` at half the cost
    (no ``UUID`` object; the request path makes three per request)."""
    h = "%032x" % (int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """Return a fresh random event id (UUID4, string)."""
    return new_uuid4()


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    event_id: str = Field(default_factory=new_event_id)
    ts: datetime = Field(default_factory=now_utc)
    experiment: str
    phase: int
    arm: str | None
    unit_id: str | None
    request_id: str | None = None

    def to_json(self) -> bytes:
        """Return the event as compact JSON bytes (``ts`` in RFC 3339 UTC, ``text`` only when logged)."""
        exclude = {k for k in ("text", "shadow_text", "attributes") if getattr(self, k, "") is None}
        if getattr(self, "holdout", True) is False:
            exclude.add("holdout")
        return self.model_dump_json(by_alias=True, exclude=exclude or None).encode()

    def key(self) -> bytes:
        """Return the Kafka message key: the unit id (request id when there is no unit)."""
        return (self.unit_id or self.request_id or self.event_id).encode()

    # The start of the event's text (a kind byte, see TEXT_KIND_*, then the prompt's or the answer's
    # start): kept in memory only, handed to the event shipper (which turns it into features: language,
    # topic, refusal, a shadow pair's similarity...), never serialised.
    _text_sample: bytes = PrivateAttr(default=b"")

    def attach_text_sample(self, sample: bytes) -> None:
        """Keep the start of the event's text for the event shipper (never serialised, never logged)."""
        self._text_sample = sample

    @property
    def text_sample(self) -> bytes:
        """Return the text sample attached for the event shipper (b"" when there is none)."""
        return self._text_sample


TEXT_KIND_PROMPT, TEXT_KIND_ANSWER, TEXT_KIND_STREAM, TEXT_KIND_PAIR = b"P", b"A", b"S", b"D"
"""The first byte of a text sample handed to the event shipper: what the rest of it is (a pair: the
control's answer sample and the shadow candidate's, each with its own kind byte, see
:func:`pair_sample`)."""


def pair_sample(control: bytes, candidate: bytes) -> bytes:
    """Return the text sample of a shadow pair: the two answer samples, the first's length in 4 bytes."""
    return TEXT_KIND_PAIR + len(control).to_bytes(4, "big") + control + candidate


def split_pair_sample(body: bytes) -> tuple[bytes, bytes]:
    """Return (control sample, candidate sample) from a pair sample's body (after its kind byte)."""
    n = int.from_bytes(body[:4], "big")
    return body[4:4 + n], body[4 + n:]


class ExposureEvent(_Event):
    type: Literal["exposure"] = "exposure"
    requested_model: str
    upstream_model: str
    forced: bool = False
    holdout: bool = False  # kept on the control by the long-term holdout (docs/holdout.md); not in the experiment
    features: dict[str, float | str] = Field(default_factory=dict)
    # the request's segment attributes: its client and the attributes proxy.attributes allows (docs/segments.md)
    attributes: dict[str, str] | None = None
    text: str | None = None


class ResponseEvent(_Event):
    type: Literal["response"] = "response"
    status_code: int
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    stream: bool = False
    forced: bool = False
    text: str | None = None
    finish_reason: str | None = None  # of the first choice, as the upstream said it
    # added by the event shipper from the answer's start (docs/features.md): refusal, empty, truncated, chars
    answer: dict[str, float] | None = None


class ShadowSide(BaseModel):
    """One call of a shadow pair: what the response event of a served request would say."""

    model_config = ConfigDict(extra="forbid")

    status_code: int | None  # None: no answer (timeout, unreachable)
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    finish_reason: str | None = None


class ShadowEvent(_Event):
    """A control request mirrored to a candidate: both calls, and the shipper's comparison of their answers.

    ``arm`` is the control (whose answer the client got), ``candidate`` the shadow arm. ``scores``
    (added by the event shipper from the two answers, in memory): ``similarity`` (chrF, 0-100),
    ``length_ratio`` (candidate characters / control characters), ``refusal_control``,
    ``refusal_candidate``, ``json_control``, ``json_candidate`` (1.0 when the answer parses as JSON;
    only when the request asked for JSON), ``same_finish`` (1.0 when both finish reasons agree).
    """

    type: Literal["shadow"] = "shadow"
    candidate: str
    stream: bool = False
    json_requested: bool = False
    control: ShadowSide
    shadow: ShadowSide
    scores: dict[str, float] | None = None
    text: str | None = None  # the control's answer, only with proxy.log_text
    shadow_text: str | None = None  # the candidate's answer, only with proxy.log_text


class OutcomeEvent(_Event):
    """A business outcome. Without ``experiment`` (and so without phase and arm) it is history: an
    outcome of the unit outside any experiment, read as its pre-period value (CUPED, docs/events.md)."""

    type: Literal["outcome"] = "outcome"
    experiment: str | None  # type: ignore[assignment]
    phase: int | None  # type: ignore[assignment]
    metric: str
    value: float


class DriftEvent(_Event):
    """The drift detector's verdict changed for an experiment (arm None: all arms together).

    ``detector``: ``univariate`` (the prompts' features), ``classifier`` (its second opinion) or
    ``output`` (the arm's answers against its own reference). ``changes``: one sentence per group of
    features that moved, for a person ("questions: 27% → 96% of prompts").
    """

    type: Literal["drift"] = "drift"
    detector: str
    detected: bool
    drifted_features: list[str] = Field(default_factory=list)
    changes: list[str] = Field(default_factory=list)
    window_size: int


class ControlEvent(_Event):
    """A change of an experiment's state (docs/rollout.md): who did what, why, and on what evidence.

    The same change is the newest message of the experiment on the control topic; this copy on the
    events topic is the record that the lake keeps and the report's timeline shows. ``event_id`` is
    the change's id.
    """

    type: Literal["control"] = "control"
    action: Literal["pause", "resume", "coverage", "shadow"]
    status: Literal["running", "paused"]
    coverage: float
    actor: Literal["guard", "admin"]
    changed_by: str | None = None  # who, for an admin change (given to the admin API as "by")
    reason: str
    revision: int
    evidence: dict[str, Any] | None = None  # the guard's: metric, estimate, interval, units, test


AnyEvent = ExposureEvent | ResponseEvent | OutcomeEvent | DriftEvent | ControlEvent | ShadowEvent
Event = Annotated[AnyEvent, Field(discriminator="type")]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(raw: bytes | str) -> AnyEvent:
    """Return the typed event parsed from its JSON; raises pydantic.ValidationError when malformed."""
    return _EVENT_ADAPTER.validate_json(raw)
