"""The official openai client through a real proxy process, and the events that reach the real broker."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import openai

from splitwatch.service.proxy.assignment import bucket_of
from tests.harness import base_config, experiment_config, read_events, unique_by_event_id


def _client(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def _expected_arm(unit: str) -> str:
    return "base" if bucket_of("support-ft", unit) < 5000 else "finetuned"


def test_sync_chat_and_completions_reach_the_units_arm(start_proxy, stubs) -> None:
    proxy = start_proxy()
    client = _client(proxy)
    before = {s.name: s.stats()["models"] for s in stubs}
    units = [f"user-{i}" for i in range(12)]
    assert {_expected_arm(u) for u in units} == {"base", "finetuned"}
    for unit in units:
        raw = client.chat.completions.with_raw_response.create(
            model="support-bot", messages=[{"role": "user", "content": "Where is my parcel?"}], user=unit)
        reply = raw.parse()
        arm = raw.headers["x-splitwatch-arm"]
        assert arm == _expected_arm(unit)
        assert raw.headers["x-splitwatch-experiment"] == "support-ft"
        assert raw.headers["x-splitwatch-request-id"]
        stub_name = "base" if arm == "base" else "ft"
        assert reply.choices[0].message.content.startswith(f"{stub_name}-w0")
        assert reply.usage is not None and reply.usage.completion_tokens == 8
        text = client.completions.create(model="support-bot", prompt="hello", user=unit)
        assert text.choices[0].text.startswith(f"{stub_name}-w0")
    # The upstream saw its own model name, never the requested one.
    after = {s.name: s.stats()["models"] for s in stubs}
    assert after["base"].get("support-bot") is None and after["ft"].get("support-bot") is None
    assert after["base"].get("llama-base", 0) > before["base"].get("llama-base", 0)
    assert after["ft"].get("llama-ft", 0) > before["ft"].get("llama-ft", 0)


def test_streaming_sync_and_async(start_proxy) -> None:
    proxy = start_proxy()
    client = _client(proxy)
    stream = client.chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "hi"}], user="stream-user", stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    prefix = "base" if _expected_arm("stream-user") == "base" else "ft"
    assert text == " ".join(f"{prefix}-w{i}" for i in range(8))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8

    async def run_async() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
        resp = await aclient.chat.completions.create(
            model="support-bot", messages=[{"role": "user", "content": "hi"}], user="async-user")
        parts = []
        async for chunk in await aclient.chat.completions.create(
                model="support-bot", messages=[{"role": "user", "content": "hi"}], user="async-user",
                stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        await aclient.close()
        return resp.choices[0].message.content, "".join(parts)

    whole, streamed = asyncio.run(run_async())
    assert whole == streamed and whole.split()[0].endswith("-w0")


def test_streams_log_token_counts_without_showing_clients_a_chunk_they_did_not_ask_for(
        start_proxy, broker, topic, stubs, tmp_path) -> None:
    exp = experiment_config(*stubs)
    exp["arms"][1]["upstream"]["stream_usage"] = False  # e.g. a server that refuses stream_options
    proxy = start_proxy(config=base_config(broker.bootstrap, topic, tmp_path, [exp]))
    client = _client(proxy)
    units = {"base": next(u for u in (f"su-{i}" for i in range(99)) if _expected_arm(u) == "base"),
             "finetuned": next(u for u in (f"su-{i}" for i in range(99)) if _expected_arm(u) == "finetuned")}
    ids = {}
    for arm, unit in units.items():
        for asked in (False, True):
            extra = {"stream_options": {"include_usage": True}} if asked else {}
            with client.chat.completions.with_streaming_response.create(
                    model="support-bot", messages=[{"role": "user", "content": "hi there"}], user=unit,
                    stream=True, **extra) as raw:
                ids[(arm, asked)] = raw.headers["x-splitwatch-request-id"]
                chunks = list(raw.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.split()[-1].endswith("-w7")
            usage_chunks = [c for c in chunks if c.usage is not None]
            if asked:  # the client asked: it gets the usage chunk, as from the model itself
                assert len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens == 8
            else:  # it did not: no extra chunk, whatever the proxy asked the upstream for
                assert usage_chunks == [] and all(c.choices for c in chunks)
    responses = {e["request_id"]: e for e in read_events(broker.bootstrap, topic, expect=8)
                 if e["type"] == "response"}
    for (arm, asked), rid in ids.items():
        tokens = responses[rid]["completion_tokens"]
        # the base arm's upstream is asked for usage; the finetuned arm's (stream_usage: false) is not
        assert tokens == (8 if arm == "base" or asked else None), (arm, asked, tokens)


def test_events_match_requests_one_to_one(start_proxy, broker, topic) -> None:
    proxy = start_proxy()
    client = _client(proxy)
    sent: dict[str, tuple[str, str, bool]] = {}
    for i in range(60):
        unit = f"evt-unit-{i % 20}"
        stream = i % 3 == 0
        if stream:
            raw = client.chat.completions.with_streaming_response.create(
                model="support-bot", messages=[{"role": "user", "content": f"zebraquokka {i}?"}], user=unit,
                stream=True, stream_options={"include_usage": True})
            with raw as r:
                rid, arm = r.headers["x-splitwatch-request-id"], r.headers["x-splitwatch-arm"]
                for _ in r.iter_lines():
                    pass
        else:
            r = client.chat.completions.with_raw_response.create(
                model="support-bot", messages=[{"role": "user", "content": f"zebraquokka {i}?"}], user=unit)
            rid, arm = r.headers["x-splitwatch-request-id"], r.headers["x-splitwatch-arm"]
        sent[rid] = (unit, arm, stream)
    outcome = httpx.post(proxy.url + "/v1/outcomes", json=[
        {"experiment": "support-ft", "unit_id": "evt-unit-1", "metric": "resolved", "value": 1},
        {"experiment": "support-ft", "unit_id": "evt-unit-2", "metric": "csat", "value": 4.5,
         "event_id": "client-chosen-id-1"}])
    assert outcome.status_code == 202, outcome.text
    assert outcome.json()["accepted"] == 2 and "client-chosen-id-1" in outcome.json()["event_ids"]

    events = unique_by_event_id(read_events(broker.bootstrap, topic, expect=2 * 60 + 2))
    by_type = Counter(e["type"] for e in events.values())
    assert by_type == {"exposure": 60, "response": 60, "outcome": 2}
    exposures = {e["request_id"]: e for e in events.values() if e["type"] == "exposure"}
    responses = {e["request_id"]: e for e in events.values() if e["type"] == "response"}
    assert set(exposures) == set(sent) == set(responses)
    for rid, (unit, arm, stream) in sent.items():
        ex, rs = exposures[rid], responses[rid]
        assert (ex["unit_id"], ex["arm"], ex["experiment"], ex["phase"]) == (unit, arm, "support-ft", 1)
        assert ex["_key"] == unit and rs["_key"] == unit  # keyed by unit: one unit's events stay ordered
        assert ex["upstream_model"] == ("llama-base" if arm == "base" else "llama-ft")
        assert ex["requested_model"] == "support-bot" and ex["forced"] is False
        assert ex["features"]["is_question"] == 1.0 and ex["features"]["messages"] == 1.0
        assert isinstance(ex["features"]["language"], str) and len(ex["features"]["language"]) in (2, 3)
        assert (rs["status_code"], rs["stream"], rs["arm"]) == (200, stream, arm)
        assert rs["completion_tokens"] == 8 and rs["latency_ms"] > 0
        assert (rs["ttft_ms"] is not None) == stream
        # Prompt and completion text are never shipped by default.
        assert "text" not in ex and "text" not in rs and "zebraquokka" not in str(ex) + str(rs)
    outcomes = [e for e in events.values() if e["type"] == "outcome"]
    assert {(o["unit_id"], o["metric"], o["value"]) for o in outcomes} == {
        ("evt-unit-1", "resolved", 1.0), ("evt-unit-2", "csat", 4.5)}
    assert {o["arm"] for o in outcomes if o["unit_id"] == "evt-unit-1"} == {_expected_arm("evt-unit-1")}


def test_same_unit_same_arm_across_restarts_and_instances(start_proxy, tmp_path) -> None:
    units = [f"sticky-{i}" for i in range(40)]

    def arms(proxy) -> dict[str, str]:
        return {u: httpx.get(f"{proxy.url}/v1/assignments/{u}").json()["assignments"][0]["arm"] for u in units}

    def served(proxy) -> dict[str, str]:
        client = _client(proxy)
        return {u: client.chat.completions.with_raw_response.create(
            model="support-bot", messages=[{"role": "user", "content": "x"}], user=u).headers["x-splitwatch-arm"]
            for u in units}

    first = start_proxy(workdir=tmp_path / "a")
    a1 = served(first)
    second = start_proxy(workdir=tmp_path / "b")
    assert served(second) == a1 == arms(second)
    first.stop()
    first.start()
    assert served(first) == a1
    assert a1 == {u: _expected_arm(u) for u in units}
    assert set(a1.values()) == {"base", "finetuned"}


def test_exposures_carry_the_prompts_language_but_not_its_text(start_proxy, broker, topic) -> None:
    proxy = start_proxy()
    prompts = {"de": "Wo ist mein Paket? Ich warte seit einer Woche darauf.",
               "es": "¿Dónde está mi paquete? Lo estoy esperando desde hace una semana.",
               "en": "Where is my parcel? I have been waiting for it for a week."}
    ids = {}
    for lang, text in prompts.items():
        r = httpx.post(proxy.url + "/v1/chat/completions", json={
            "model": "support-bot", "user": f"lang-{lang}", "messages": [{"role": "user", "content": text}]})
        ids[r.headers["x-splitwatch-request-id"]] = lang
    events = read_events(broker.bootstrap, topic, expect=6)
    exposures = {e["request_id"]: e for e in events if e["type"] == "exposure"}
    assert {rid: exposures[rid]["features"]["language"] for rid in ids} == ids
    assert not any("Paket" in str(e) or "paquete" in str(e) or "parcel" in str(e) for e in events)


def test_exposure_language_is_chosen_among_the_configured_languages(start_proxy, broker, topic, stubs,
                                                                   tmp_path) -> None:
    cfg = base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)])
    cfg["drift"] = {"languages": ["en", "sw", "de"]}
    proxy = start_proxy(config=cfg)
    text = "Kifurushi changu kiko wapi? Nimekuwa nikikisubiri kwa wiki nzima sasa."  # Swahili: not a default
    r = httpx.post(proxy.url + "/v1/chat/completions", json={
        "model": "support-bot", "user": "lang-sw", "messages": [{"role": "user", "content": text}]})
    rid = r.headers["x-splitwatch-request-id"]
    exposure = next(e for e in read_events(broker.bootstrap, topic, expect=2)
                    if e["type"] == "exposure" and e["request_id"] == rid)
    assert exposure["features"]["language"] == "sw"


def test_unit_from_header_forced_arm_and_no_unit(start_proxy, broker, topic) -> None:
    proxy = start_proxy()
    url = proxy.url + "/v1/chat/completions"
    body = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(url, json=body, headers={"X-Splitwatch-Unit": "header-unit"})
    assert r.status_code == 200 and r.headers["x-splitwatch-arm"] == _expected_arm("header-unit")
    forced_arm = "finetuned" if _expected_arm("header-unit") == "base" else "base"
    f = httpx.post(url, json=body, headers={"X-Splitwatch-Unit": "header-unit", "X-Splitwatch-Force-Arm": forced_arm})
    assert f.status_code == 200 and f.headers["x-splitwatch-arm"] == forced_arm
    assert f.headers["x-splitwatch-excluded"] == "forced"
    n = httpx.post(url, json=body)
    assert n.status_code == 200 and n.headers["x-splitwatch-arm"] == "base"
    assert n.headers["x-splitwatch-excluded"] == "no_unit"
    events = list(unique_by_event_id(read_events(broker.bootstrap, topic, expect=4)).values())
    exposures = [e for e in events if e["type"] == "exposure"]
    assert len(exposures) == 2  # the request with no unit is not an exposure
    assert {(e["unit_id"], e["forced"], e["arm"]) for e in exposures} == {
        ("header-unit", False, _expected_arm("header-unit")), ("header-unit", True, forced_arm)}
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'splitwatch_unassigned_requests_total{experiment="support-ft",reason="no_unit"} 1.0' in metrics


def test_passthrough_serves_other_models_unlogged(start_proxy, stubs, broker, topic) -> None:
    base = stubs[0]
    proxy = start_proxy(passthrough={"base_url": base.base_url})
    before = base.stats()["models"].get("gpt-other", 0)
    r = httpx.post(proxy.url + "/v1/chat/completions", json={
        "model": "gpt-other", "user": "pt-unit", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "gpt-other"  # model not rewritten
    assert "x-splitwatch-arm" not in r.headers
    assert base.stats()["models"]["gpt-other"] == before + 1
    assert httpx.post(proxy.url + "/v1/chat/completions", json={
        "model": "gpt-other", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).text.endswith(
        "data: [DONE]\n\n")
    # a request in the experiment, so that the topic exists; the passthrough ones left no event
    _client(proxy).chat.completions.create(model="support-bot", messages=[{"role": "user", "content": "x"}],
                                           user="pt-unit")
    events = read_events(broker.bootstrap, topic, expect=2)
    assert {e["requested_model"] for e in events if e["type"] == "exposure"} == {"support-bot"}
    assert len(events) == 2
