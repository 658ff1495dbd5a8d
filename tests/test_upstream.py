"""Upstream client pooling and the SSE usage scanner."""

from __future__ import annotations

import asyncio

from splitwatch.service.config import UpstreamConfig
from splitwatch.service.proxy.upstream import ShardedClient, SSEUsageScanner


def test_lease_picks_the_least_busy_pool_and_release_is_idempotent() -> None:
    sharded = ShardedClient(UpstreamConfig(base_url="http://x/v1", max_connections=24))
    assert len(sharded.transports) == 3
    leases = [sharded.lease() for _ in range(6)]
    assert sharded.in_flight == [2, 2, 2]
    leases[0][1]()
    leases[0][1]()  # a second call changes nothing
    assert sorted(sharded.in_flight) == [1, 2, 2]
    client, _ = sharded.lease()
    assert client is leases[0][0]  # the pool with a free slot is chosen
    asyncio.run(sharded.aclose())


def test_sse_usage_scanner_handles_split_chunks() -> None:
    stream = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}\n\n'
              b"data: [DONE]\n\n")
    for cut in range(1, len(stream)):
        s = SSEUsageScanner()
        s.feed(stream[:cut])
        s.feed(stream[cut:])
        assert (s.prompt_tokens, s.completion_tokens) == (12, 34), cut
    none = SSEUsageScanner()
    none.feed(b'data: {"choices":[{"delta":{"content":"\\"usage\\""}}]}\n\n')
    assert none.prompt_tokens is None


def _sse(*objs: object) -> bytes:
    import orjson

    return b"".join(b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n\n" for o in objs)


def test_usage_chunk_filter_drops_only_the_usage_only_chunk_at_any_split() -> None:
    from splitwatch.service.proxy.upstream import UsageChunkFilter

    content = [{"id": "c", "choices": [{"index": 0, "delta": {"content": f"w{i}"}}], "usage": None}
               for i in range(3)]
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    stream = _sse(*content, usage, b"[DONE]")
    expected = _sse(*content, b"[DONE]")  # what a client that did not ask for usage gets
    for size in (1, 2, 7, 50, len(stream)):  # every way an upstream may split its writes
        f = UsageChunkFilter()
        out = b"".join(f.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + f.flush()
        assert out == expected, size
    crlf = stream.replace(b"\n", b"\r\n")
    f = UsageChunkFilter()
    assert f.feed(crlf) + f.flush() == expected.replace(b"\n", b"\r\n")
    # complete events pass at once; only an unfinished one waits; a truncated stream is passed on
    f = UsageChunkFilter()
    first = _sse(content[0])
    assert f.feed(first + b"data: {\"id\"") == first
    assert f.flush() == b"data: {\"id\""
