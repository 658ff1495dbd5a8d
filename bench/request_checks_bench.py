"""Cost of the request checks added by the hardening, next to what the request path already did.

Per request the proxy now also walks the decoded body for its JSON depth and bounds a few
identifiers. This measures both, in one process, against the parse the proxy always did
(``orjson.loads`` of the same body), for chat requests of 1, 10 and 100 messages; the printed
ratio is the checks' time over the parse's. (The end-to-end figures are bench/proxy_overhead.py's.)

Usage: python bench/request_checks_bench.py
"""

from __future__ import annotations

import timeit

import orjson

from splitwatch.service.proxy.request_body import check_identifier, json_depth_exceeds


def body(messages: int) -> bytes:
    """Return a chat request of ``messages`` messages of about 40 words each."""
    text = " ".join(["word"] * 40)
    return orjson.dumps({"model": "support-bot", "user": "customer-1234", "stream": False,
                         "messages": [{"role": "user" if i % 2 else "assistant", "content": text}
                                      for i in range(messages)]})


def per_call_us(fn: object, number: int) -> float:
    """Return the best of 5 timings of ``fn`` in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    print("| messages | body bytes | orjson.loads (us) | depth check (us) | identifier checks (us) | checks / parse |")
    print("|---|---|---|---|---|---|")
    for n in (1, 10, 100):
        raw = body(n)
        decoded = orjson.loads(raw)
        number = max(200, 200_000 // n)
        parse = per_call_us(lambda raw=raw: orjson.loads(raw), number)
        depth = per_call_us(lambda d=decoded: json_depth_exceeds(d, 64), number)
        ids = per_call_us(lambda d=decoded: (check_identifier(d["model"], "model", 256),
                                             check_identifier(d["user"], "user", 256)), number)
        print(f"| {n} | {len(raw)} | {parse:.2f} | {depth:.2f} | {ids:.2f} | {(depth + ids) / parse:.2f} |")


if __name__ == "__main__":
    main()
