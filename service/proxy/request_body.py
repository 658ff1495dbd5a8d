"""Reading and decoding request bodies: size, time, content type, JSON depth, bounded identifiers."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from .. import metrics
from .errors import ClientGone, InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType


async def read_limited_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """Return the request body.

    Raises PayloadTooLarge as soon as it exceeds ``limit`` bytes, RequestTimeout when it takes longer
    than ``timeout_s`` to arrive, and ClientGone when the client leaves while sending it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        metrics.CLIENT_DISCONNECTS.labels("request_body").inc()
        raise ClientGone("the client left while sending the request body") from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


def parse_json(request: Request, raw: bytes, max_depth: int) -> Any:
    """Return the decoded JSON body; raise UnsupportedMediaType or InvalidRequest (naming the problem).

    JSON nested deeper than ``max_depth`` is refused: it would parse, but could not be serialised
    again (orjson stops at 254 levels) and has no use in an OpenAI request.
    """
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'!r}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own limit (1024 levels)
            raise InvalidRequest(f"request body is nested deeper than {max_depth} levels",
                                 code="json_too_deep") from None
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if json_depth_exceeds(body, max_depth):
        raise InvalidRequest(f"request body is nested deeper than {max_depth} levels", code="json_too_deep")
    return body


def parse_json_object(request: Request, raw: bytes, max_depth: int) -> dict[str, Any]:
    """Return the body as a JSON object; raise a 4xx error when it is not one."""
    body = parse_json(request, raw, max_depth)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return body


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Return True when ``value`` (decoded JSON) nests objects and arrays deeper than ``max_depth``.

    Level by level, visiting only containers' members, with exact type checks (orjson decodes to
    plain ``dict`` and ``list``): bench/request_checks_bench.py measures it against the parse.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1 if level else 0
    while level:
        deeper = []
        for node in level:
            for child in (node.values() if type(node) is dict else node):
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        if deeper:
            depth += 1
            if depth > max_depth:
                return True
        level = deeper
    return False


def check_identifier(value: str, field: str, max_bytes: int) -> str:
    """Return ``value``; raise InvalidRequest naming ``field`` when it is longer than ``max_bytes`` in UTF-8."""
    n = len(value)
    if n > max_bytes or (n * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes):
        raise InvalidRequest(f"{field} is longer than {max_bytes} bytes (proxy.max_id_bytes)", param=field,
                             code="identifier_too_long")
    return value
