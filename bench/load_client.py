"""A closed-loop HTTP/1.1 load generator that keeps each answer's status and latency apart.

wrk reports one latency distribution for every answer; under overload the proxy's fast 503s and its
served 200s must be told apart (the served p99 is the point), so this client records both per request.
Raw asyncio streams on uvloop, keep-alive, Content-Length bodies only (what the proxy and the stubs
send): about 20 µs of client time per request, far below the proxy's.

    python bench/load_client.py HOST PORT PATH CONNECTIONS SECONDS [TIMEOUT_S [HONOUR_RETRY_AFTER]]

With HONOUR_RETRY_AFTER=1 a connection refused with ``Retry-After: N`` waits N seconds before its next
request, as the OpenAI SDK's retries do; with 0 it asks again at once (the worst case for a server).

prints one JSON object: {"status": {code: count}, "timeouts": n, "latency_ms": {code: [p50, p99, max]}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np

BODY = b'{"model": "support-bot", "messages": [{"role": "user", "content": "Where is my parcel? Order 1234."}], ' \
       b'"user": "load-%d"}'


async def _connection(host: str, port: int, path: str, index: int, until: float, timeout_s: float,
                      out: list[tuple[int, float]], timeouts: list[int], honour_retry_after: bool) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < until:
            body = BODY % (index * 1_000_000 + i)
            i += 1
            request = (b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                       % (path.encode(), host.encode(), len(body))) + body
            t0 = time.perf_counter()
            writer.write(request)
            try:
                async with asyncio.timeout(timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = 0
                    close = False
                    retry_after = 0.0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        name = name.strip().lower()
                        if name == b"content-length":
                            length = int(value)
                        elif name == b"connection" and value.strip().lower() == b"close":
                            close = True
                        elif name == b"retry-after":
                            retry_after = float(value)
                    await reader.readexactly(length)
            except TimeoutError:
                timeouts.append(1)
                return
            out.append((status, time.perf_counter() - t0))
            if honour_retry_after and retry_after:
                await asyncio.sleep(min(retry_after, max(0.0, until - time.perf_counter())))
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (ConnectionError, asyncio.IncompleteReadError):
        timeouts.append(0)  # a connection the server closed mid-answer: counted with the failures
    finally:
        writer.close()


async def run(host: str, port: int, path: str, connections: int, seconds: float,
              timeout_s: float = 10.0, honour_retry_after: bool = False) -> dict:
    """Return every answer's status count, the timeouts, and latency percentiles per status (ms)."""
    out: list[tuple[int, float]] = []
    timeouts: list[int] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(host, port, path, i, until, timeout_s, out, timeouts, honour_retry_after)
                           for i in range(connections)))
    by_status: dict[int, list[float]] = {}
    for status, latency in out:
        by_status.setdefault(status, []).append(latency)
    return {"seconds": seconds, "status": {str(k): len(v) for k, v in sorted(by_status.items())},
            "timeouts": sum(timeouts), "broken": timeouts.count(0),
            "latency_ms": {str(k): [float(np.percentile(v, 50) * 1000), float(np.percentile(v, 99) * 1000),
                                    float(max(v) * 1000)] for k, v in sorted(by_status.items())}}


def main() -> None:
    host, port, path, connections, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
        float(sys.argv[5])
    timeout_s = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
    honour = len(sys.argv) > 7 and sys.argv[7] == "1"
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(host, port, path, connections, seconds, timeout_s, honour))))


if __name__ == "__main__":
    main()
