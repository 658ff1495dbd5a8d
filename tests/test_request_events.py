"""The request path's events (service/request_events.py) against the schema's models, byte for byte.

The proxy builds its exposure and response events without pydantic; the schema (service/events.py) stays
the reference. Every case below builds the event both ways, with the same id and time, and requires the
same JSON bytes, the same Kafka key, and a parse that gives back the model.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime

import pytest

from splitwatch.service.delivery.publisher import EventPublisher
from splitwatch.service.events import ExposureEvent, ResponseEvent, new_event_id, new_uuid4, parse_event
from splitwatch.service.features.prompt import features_of_prompt, prompt_text
from splitwatch.service.request_events import RequestEvent, exposure_event, response_event

TIMES = [datetime(2026, 12, 6, 15, 24, 21, 123456, tzinfo=UTC), datetime(2026, 12, 6, 15, 24, 21, tzinfo=UTC),
         datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC)]
FEATURES = [features_of_prompt(*prompt_text({"messages": [{"role": "user", "content": text}]}))
            for text in ("Where is my parcel? Order 1234.", "Hola, ¿dónde está mi pedido?", "")]
FEATURES.append({"lang": "es", "tiny": 1e-7, "huge": 1.5e300, "third": 1 / 3, "neg": -0.0})


def _same_as_model(ev: RequestEvent, model_cls: type[ExposureEvent | ResponseEvent], ts: datetime) -> None:
    ev.fields["ts"] = ts
    model = model_cls.model_validate({**ev.fields})
    assert ev.to_json() == model.to_json()
    assert ev.key() == model.key()
    assert parse_event(ev.to_json()) == model
    assert ev.model() == model


@pytest.mark.parametrize(("holdout", "attributes", "text", "unit_id", "arm", "forced"), list(itertools.product(
    (False, True), (None, {}, {"client": "ios", "tier": "gold"}), (None, "", "Où est ma commande ? 😀"),
    (None, "user-1"), ("base", None), (False, True))))
def test_an_exposure_event_is_the_schemas_json(holdout, attributes, text, unit_id, arm, forced) -> None:
    for i, (features, ts) in enumerate(zip(FEATURES, itertools.cycle(TIMES), strict=False)):
        ev = exposure_event("support-ft", 2 + i, arm, unit_id, new_uuid4(), "support-bot", "llama-ft", forced,
                            holdout, features, attributes, text, b"Pwhere")
        assert (ev.type, ev.text_sample) == ("exposure", b"Pwhere")
        _same_as_model(ev, ExposureEvent, ts)


@pytest.mark.parametrize(("ttft", "tokens", "error", "text", "finish", "stream", "unit_id"), list(itertools.product(
    (None, 12.5), ((None, None), (0, 17), (123456, 1)), (None, "upstream_5xx"), (None, "Bonjour 😀"),
    (None, "stop"), (False, True), (None, "u-7"))))
def test_a_response_event_is_the_schemas_json(ttft, tokens, error, text, finish, stream, unit_id) -> None:
    for status, latency, ts in zip((200, 502, 499), (0.353, 10.0, 1234.567), TIMES, strict=True):
        ev = response_event("support-ft", 1, "finetuned", unit_id, new_uuid4(), status, latency, ttft, *tokens, error,
                            stream, False, text, finish, b"Aanswer")
        _same_as_model(ev, ResponseEvent, ts)


def test_a_value_orjson_refuses_is_written_by_the_model_instead() -> None:
    # an upstream's usage is passed on as it came: an integer past 64 bits is valid JSON for pydantic only
    ev = response_event("e", 1, "a", "u", "r", 200, 1.0, None, 2**70, 3, None, False, False, None, None, b"")
    ev.fields["ts"] = TIMES[0]
    assert ev.to_json() == ResponseEvent.model_validate(ev.fields).to_json()
    assert b'"prompt_tokens":1180591620717411303424' in ev.to_json()


def test_an_unserialisable_event_is_set_aside_by_the_publisher_as_before(tmp_path) -> None:
    from splitwatch.service.config import KafkaConfig

    pub = EventPublisher(KafkaConfig(), tmp_path / "spool")
    lone_surrogate = "\ud800"
    ev = exposure_event("e", 1, "a", "u", "r", "m", "m", False, False, {}, None, lone_surrogate, b"")
    assert pub._serialise(ev) is None  # the publisher's own handling, unchanged: a dead letter, not a crash
    assert pub.dead_letters.path.exists() and b"unserialisable" in pub.dead_letters.path.read_bytes()


def test_ids_are_random_uuid4_strings() -> None:
    ids = [new_uuid4() for _ in range(20_000)] + [new_event_id() for _ in range(100)]
    assert len(set(ids)) == len(ids)
    for s in ids[:2000]:
        u = uuid.UUID(s)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, s)
    # every other bit varies: no nibble outside the version and variant is constant across ids
    for pos in (0, 7, 9, 12, 15, 20, 35):
        assert len({s[pos] for s in ids[:2000]}) > 8
