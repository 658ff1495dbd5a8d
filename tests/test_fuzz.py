"""Bounded property-based fuzzing of every proxy endpoint against real processes.

hypothesis generates requests a hostile or careless client could send: deep JSON, huge
identifiers, extreme numbers and timestamps, wrong types, wrong encodings and content types, on
every endpoint. The proxy must answer each with a status below 500 (an OpenAI error body when it
refuses), and afterwards it must still deliver every event of a batch of ordinary requests to
Kafka: no request can stop the event log. Seeded (``derandomize``) and bounded in examples, so the
run is the same each time.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import read_events, unique_by_event_id, wait_delivered

TOKEN = "fuzz-admin-token"
EXAMPLES = 120  # per endpoint family

# -- building blocks --------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)  # orjson: 64 bits; bigger: raw_numbers
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=12)
huge_ids = st.sampled_from([257, 1_000, 70_000, 300_000]).flatmap(
    lambda n: st.sampled_from(["u" * n, "é" * (n // 2 + 1), "\U0001F600" * (n // 4 + 1)]))
weird_ids = huge_ids | st.sampled_from(["", " ", "\x00", "a\nb", "../../etc", "%00", "\u202e", 0, -1, 1.5,
                                         True, None, [], {}, ["u1"], {"id": "u1"}])
raw_numbers = st.sampled_from([b"1e999", b"-1e999", b"1" * 5000, b"NaN", b"Infinity", b"-0", b"1e-400",
                               b"18446744073709551616", b"0x10", b"01"])
timestamps = st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-13-45T00:00:00Z",
                              "", "now", "2026-11-27T10:00:00", "2026-11-27T10:00:00+25:00", "1970-01-01T00:00:00Z",
                              "2026-11-27T10:00:00.123456789Z", 1e20, -1, 0, True, [], {}])


def deep(depth: int, kind: str) -> bytes:
    """Return JSON nested ``depth`` levels (lists or objects)."""
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


deep_json = st.tuples(st.sampled_from([65, 100, 254, 255, 600, 1024, 1025, 5000]),
                      st.sampled_from(["list", "dict"])).map(lambda t: deep(*t))
bad_encodings = st.sampled_from([b"\xff\xfe{}", b'{"model": "\xff"}', "{}".encode("utf-16"),
                                 b'\xef\xbb\xbf{"model": "support-bot"}', b"", b"null", b"[]", b'"x"', b"{",
                                 b'{"model": "support-bot", "messages": [{"role": "user", "content": "\\ud800"}]}'])
# mostly JSON, so that fuzzed bodies reach the handlers' validation, not only the content-type check
content_types = st.sampled_from(["application/json"] * 8 + ["application/json; charset=utf-8", "text/plain",
                                 "application/json; charset=utf-16", "", "multipart/form-data"])


def mutated(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Return ``base`` with one to three of ``fields`` set to fuzz values (or removed)."""
    value = json_values | weird_ids | timestamps | st.just("__remove__")
    return st.dictionaries(st.sampled_from(fields), value, min_size=1, max_size=2).map(
        lambda changes: {k: v for k, v in {**base, **changes}.items() if v != "__remove__"})


def body_bytes(obj_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Return request bodies: the (mutated) objects, deep JSON, raw extreme numbers, bad encodings."""
    as_json = obj_strategy.map(lambda o: orjson.dumps(o, option=orjson.OPT_NON_STR_KEYS))
    with_number = st.tuples(obj_strategy, raw_numbers).map(
        lambda t: orjson.dumps(t[0])[:-1] + (b', "n": ' if len(t[0]) else b'"n": ') + t[1] + b"}"
        if isinstance(t[0], dict) else orjson.dumps(t[0]))
    return as_json | as_json | as_json | with_number | deep_json | bad_encodings


CHAT = {"model": "support-bot", "messages": [{"role": "user", "content": "hello"}], "user": "fuzz-user"}
COMPLETION = {"model": "support-bot", "prompt": "hello", "user": "fuzz-user"}
OUTCOME = {"experiment": "support-ft", "unit_id": "fuzz-user", "metric": "resolved", "value": 1}
CHAT_FIELDS = ["model", "messages", "user", "stream", "stream_options", "temperature", "max_tokens", "n", "tools"]
OUTCOME_FIELDS = ["experiment", "unit_id", "metric", "value", "request_id", "ts", "event_id", "extra"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str | bytes], bytes]:
    """Return (method, path, headers, body) of one fuzzed request to any endpoint."""
    family = draw(st.sampled_from(["chat", "completions", "outcomes", "outcome_ts", "outcome_list", "assignments",
                                   "admin", "get"]))
    headers: dict[str, str | bytes] = {"content-type": draw(content_types)}
    if draw(st.integers(0, 3)) == 0:
        unit = draw(huge_ids | st.sampled_from(["u-1", "", "ü", "a" * 300]))
        headers["x-splitwatch-unit"] = unit.encode("utf-8")[:400_000]  # raw UTF-8 bytes in a header
    if draw(st.integers(0, 9)) == 0:
        headers["x-splitwatch-force-arm"] = draw(st.sampled_from(["finetuned", "nope", "x" * 5000]))
    if family == "chat":
        return "POST", "/v1/chat/completions", headers, draw(body_bytes(mutated(CHAT, CHAT_FIELDS)))
    if family == "completions":
        return "POST", "/v1/completions", headers, draw(body_bytes(mutated(COMPLETION, ["model", "prompt", "user",
                                                                                          "stream", "suffix"])))
    if family == "outcomes":
        return "POST", "/v1/outcomes", headers, draw(body_bytes(mutated(OUTCOME, OUTCOME_FIELDS)))
    if family == "outcome_ts":  # everything valid but the time or the value: the deepest validation
        field = draw(st.sampled_from(["ts", "value"]))
        return "POST", "/v1/outcomes", {"content-type": "application/json"}, orjson.dumps(
            {**OUTCOME, "metric": "csat", field: draw(timestamps if field == "ts" else json_values)},
            option=orjson.OPT_NON_STR_KEYS)
    if family == "outcome_list":
        items = draw(st.lists(mutated(OUTCOME, OUTCOME_FIELDS), min_size=0, max_size=5))
        return "POST", "/v1/outcomes", headers, orjson.dumps(items, option=orjson.OPT_NON_STR_KEYS)
    if family == "assignments":
        unit = draw(huge_ids | st.text(min_size=1, max_size=50))
        return "GET", "/v1/assignments/" + quote(unit[:2_000], safe=""), {}, b""  # httpx caps URLs at 64 KiB (encoded)
    if family == "admin":
        headers["authorization"] = draw(st.sampled_from([f"Bearer {TOKEN}", "Bearer wrong", "", "Basic x"]))
        key = draw(st.sampled_from(["support-ft", "nope", "x" * 3000]))
        body = draw(body_bytes(mutated({"status": "running", "coverage": 1.0}, ["status", "coverage", "phase"])))
        return draw(st.sampled_from(["PUT", "GET"])), f"/admin/experiments/{key}", headers, body
    return "GET", draw(st.sampled_from(["/healthz", "/readyz", "/metrics", "/openapi.json",
                                        "/admin/experiments"])), headers, b""


def test_no_request_gets_a_5xx_or_stops_the_event_log(start_proxy, broker, topic) -> None:
    proxy = start_proxy(env={"SPLITWATCH_ADMIN_TOKEN": TOKEN})
    seen: dict[int, int] = {}
    with httpx.Client(base_url=proxy.url, timeout=30) as client:

        @settings(max_examples=EXAMPLES * 8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(req=requests())
        def one(req: tuple[str, str, dict[str, str | bytes], bytes]) -> None:
            method, path, headers, body = req
            resp = client.request(method, path, headers=headers, content=body or None)
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
            assert resp.status_code < 500, (method, path, body[:300], resp.status_code, resp.text[:500])
            if resp.status_code >= 400 and path != "/metrics":
                error = resp.json()["error"]  # an OpenAI error body
                assert isinstance(error["message"], str) and error["message"]

        one()
        print('statuses seen:', dict(sorted(seen.items())))
        assert proxy.proc is not None and proxy.proc.poll() is None
        assert len(seen) >= 5, seen  # the fuzzing reached successes and many kinds of refusal
        assert any(400 <= s < 500 for s in seen) and any(s < 300 for s in seen), seen
        # the experiment may have been paused by a fuzzed admin call: resume it, then send a batch
        assert client.put("/admin/experiments/support-ft", json={"status": "running", "coverage": 1.0},
                          headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        request_ids = []
        for i in range(40):
            body = {**(CHAT if i % 2 else COMPLETION), "user": f"after-fuzz-{i}", "stream": i % 4 == 1}
            r = client.post("/v1/chat/completions" if i % 2 else "/v1/completions", json=body)
            assert r.status_code == 200, r.text
            request_ids.append(r.headers["x-splitwatch-request-id"])
        outcome_ids = client.post("/v1/outcomes", json=[
            {**OUTCOME, "unit_id": f"after-fuzz-{i}", "event_id": str(uuid.uuid4())} for i in range(40)]
        ).json()["event_ids"]
    state = wait_delivered(proxy.url, timeout=60)
    events = list(unique_by_event_id(read_events(broker.bootstrap, topic)).values())
    by_request: dict[str, set[str]] = {}
    for e in events:
        if e.get("request_id"):
            by_request.setdefault(e["request_id"], set()).add(e["type"])
    assert all(by_request.get(rid) == {"exposure", "response"} for rid in request_ids), json.dumps(
        {rid: sorted(by_request.get(rid, ())) for rid in request_ids})[:2000]
    assert set(outcome_ids) <= {e["event_id"] for e in events}
    assert state["queued"] == 0 and state["spooled"] == 0
