"""A whole answer as an ASGI response: its status, headers and body in two ``send`` calls.

What Starlette's ``Response`` does for the request path's answers, without its per-answer work: the
headers arrive here as the proxy's own few (lowercase, ASCII) and the upstream's content type, so
nothing is lowercased or searched. The bytes are Starlette's: the given headers, then
``content-length`` (not on 1xx, 204 and 304) and ``content-type`` (``; charset=utf-8`` added to a
``text/`` type without one); tests/test_whole_path.py compares the answers byte for byte.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response


class RawResponse(Response):
    """An ASGI response of ``status``, ``headers`` (lowercase names) and ``body``, with its length and type.

    A ``Response`` for FastAPI's routes (which pass a response through unchanged), built without
    ``Response.__init__``.
    """

    def __init__(self, body: bytes, status: int, headers: dict[str, str], content_type: str) -> None:
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        if not (status < 200 or status in (204, 304)):
            raw.append((b"content-length", b"%d" % len(body)))
        if content_type.startswith("text/") and "charset=" not in content_type.lower():
            content_type += "; charset=utf-8"
        raw.append((b"content-type", content_type.encode("latin-1")))
        self.status_code = status
        self.raw_headers = raw
        self.body = body
        self.background = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})
