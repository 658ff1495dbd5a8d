"""OpenAI-style error bodies and the proxy's named exceptions.

Every error the proxy answers itself has the body
``{"error": {"message", "type", "param", "code"}}`` that OpenAI clients parse.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response


class ProxyError(Exception):
    """An error answered to the client with an OpenAI-style body."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers  # e.g. X-Splitwatch-Request-Id on the proxy's own 502 and 504
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def response(self) -> Response:
        """Return the HTTP response that reports this error."""
        return error_response(self.status_code, self.message, self.error_type, self.param, self.code,
                              self.headers)


class InvalidRequest(ProxyError):
    """The request is malformed (400)."""


class ModelNotFound(ProxyError):
    """No experiment or passthrough serves the requested model (404)."""

    status_code = 404
    code = "model_not_found"


class PayloadTooLarge(ProxyError):
    """The body exceeds ``proxy.max_body_bytes`` (413)."""

    status_code = 413
    code = "request_too_large"


class RequestTimeout(ProxyError):
    """The request body did not arrive within ``proxy.body_timeout_s`` (408)."""

    status_code = 408
    code = "request_timeout"


class ClientGone(ProxyError):
    """The client left before the request was read; nobody is there to read the answer (499)."""

    status_code = 499
    code = "client_disconnected"


class UnsupportedMediaType(ProxyError):
    """The body is not JSON (415)."""

    status_code = 415
    code = "unsupported_media_type"


class Unauthorized(ProxyError):
    """Missing or wrong admin bearer token (401)."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_admin_token"


class AdminDisabled(ProxyError):
    """No admin token is configured, so the admin API is off (403)."""

    status_code = 403
    error_type = "permission_error"
    code = "admin_disabled"


class NotFound(ProxyError):
    """A named resource (experiment) does not exist (404)."""

    status_code = 404
    code = "not_found"


class Conflict(ProxyError):
    """A concurrent change won over this one (409)."""

    status_code = 409
    code = "conflict"


class ServiceUnavailable(ProxyError):
    """A dependency the request needs (the control topic) is unreachable (503)."""

    status_code = 503
    error_type = "service_unavailable"


class Overloaded(ProxyError):
    """This worker carries as many streams as it may (503, with Retry-After): try again or elsewhere."""

    status_code = 503
    error_type = "server_overloaded"
    code = "too_many_streams"


class WorkerOverloaded(ProxyError):
    """This worker holds as many requests as it may (503, with Retry-After): try again or elsewhere."""

    status_code = 503
    error_type = "server_overloaded"
    code = "worker_overloaded"


class UpstreamError(ProxyError):
    """The upstream model endpoint failed: timeout (504), unreachable or bad answer (502)."""

    status_code = 502
    error_type = "upstream_error"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> bytes:
    """Return the JSON bytes of an OpenAI error body."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def error_response(status_code: int, message: str, error_type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Return a JSON response carrying an OpenAI error body."""
    return Response(error_body(message, error_type, param, code), status_code=status_code,
                    media_type="application/json", headers=headers)
