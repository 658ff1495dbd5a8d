"""A request's segment attributes, logged on its exposure for the report's results by segment
(docs/segments.md): its client, and the attributes ``proxy.attributes`` allows.

- **client**: the ``X-Splitwatch-Client`` header, else the name of the API key the request carries
  (``proxy.client_keys``: name -> the environment variable holding the key; compared by SHA-256,
  so that no key is kept in the clear beyond the environment it came from);
- **attributes**: ``X-Splitwatch-Attributes: plan=pro, region=eu`` (W3C-baggage-like pairs), or the
  OpenAI request body's ``metadata`` object (only its allowed keys are read; the body goes upstream
  unchanged). The header wins over ``metadata`` for the same name.

Every value is bounded like an identifier (``proxy.max_id_bytes``). A malformed header, an attribute
the config does not allow in the header, or a value that is not a string gets a 400 naming it: a
wrong segment silently dropped would bias the segment's results.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from ..config import ProxyConfig
from .errors import InvalidRequest
from .request_body import check_identifier

ATTRIBUTES_HEADER = "x-splitwatch-attributes"
CLIENT_HEADER = "x-splitwatch-client"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class AttributeRules:
    """What a request may say about its segments, compiled once per config."""

    __slots__ = ("allowed", "client_names", "max_bytes")

    def __init__(self, proxy: ProxyConfig, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.allowed = frozenset(proxy.attributes)
        self.max_bytes = proxy.max_id_bytes
        # keys whose variable is unset name no client (the proxy still serves: the report says "(unknown)")
        self.client_names = {_digest(env[var]): name for name, var in proxy.client_keys.items() if env.get(var)}

    def of_request(self, headers: Mapping[str, str], body: dict[str, Any]) -> dict[str, str] | None:
        """Return the request's segment attributes (None when it has none); raise InvalidRequest naming
        the field when one is malformed, not allowed, or too long."""
        out: dict[str, str] = {}
        client = headers.get(CLIENT_HEADER)
        if client:
            out["client"] = check_identifier(client, "X-Splitwatch-Client", self.max_bytes)
        elif self.client_names:
            scheme, _, key = headers.get("authorization", "").partition(" ")
            name = self.client_names.get(_digest(key.strip())) if scheme.lower() == "bearer" and key else None
            if name is not None:
                out["client"] = name
        if self.allowed:
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                for name in self.allowed.intersection(metadata):
                    out[name] = self._value(metadata[name], f"metadata.{name}")
            raw = headers.get(ATTRIBUTES_HEADER)
            if raw:
                out.update(self._header(raw))
        elif headers.get(ATTRIBUTES_HEADER):
            raise InvalidRequest("X-Splitwatch-Attributes is not accepted: proxy.attributes allows none",
                                 param="X-Splitwatch-Attributes", code="unknown_attribute")
        return out or None

    def _value(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{field} must be a non-empty string (a segment attribute)", param=field,
                                 code="invalid_type")
        return check_identifier(value, field, self.max_bytes)

    def _header(self, raw: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in raw.split(","):
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name:
                raise InvalidRequest(f"X-Splitwatch-Attributes: {item.strip()!r} is not name=value",
                                     param="X-Splitwatch-Attributes", code="invalid_attribute")
            if name not in self.allowed:
                raise InvalidRequest(f"X-Splitwatch-Attributes: unknown attribute {name!r}; proxy.attributes "
                                     f"allows {sorted(self.allowed)}", param="X-Splitwatch-Attributes",
                                     code="unknown_attribute")
            out[name] = self._value(value, f"X-Splitwatch-Attributes.{name}")
        return out
