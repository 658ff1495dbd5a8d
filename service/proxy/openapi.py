"""Request schemas of the OpenAI-compatible routes, for the OpenAPI document only.

The routes read and validate raw bodies themselves (one orjson parse, errors in the OpenAI shape,
the upstream's body passed through unchanged), so FastAPI does not parse these models on the
request path: they are declared through ``openapi_extra`` and cost nothing per request
(bench/proxy_overhead.py). They list the fields the proxy reads; any other OpenAI field is
allowed and passed to the upstream unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Any = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, description="the experiment's `model`, or a passthrough model")
    user: str | None = Field(None, min_length=1, description="the experiment unit (else X-Splitwatch-Unit)")
    stream: bool | None = None
    stream_options: _StreamOptions | None = None


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[_Message] = Field(min_length=1)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[Any]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return the model's JSON schema with its ``$defs`` inlined.

    Inside an OpenAPI document a ``#/$defs/...`` reference would resolve against the document's root,
    so nested models are written in place.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """Return the ``openapi_extra`` that declares ``schema`` as a route's JSON request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


CHAT_REQUEST = request_body(inline_schema(ChatCompletionRequest))
COMPLETION_REQUEST = request_body(inline_schema(CompletionRequest))
