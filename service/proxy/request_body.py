"""Reading and decoding request bodies: size limit, content type, JSON."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from .errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Return the request body; raise PayloadTooLarge as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(request: Request, raw: bytes) -> Any:
    """Return the decoded JSON body; raise UnsupportedMediaType or InvalidRequest (naming the problem)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'!r}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None


def parse_json_object(request: Request, raw: bytes) -> dict[str, Any]:
    """Return the body as a JSON object; raise a 4xx error when it is not one."""
    body = parse_json(request, raw)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return body
