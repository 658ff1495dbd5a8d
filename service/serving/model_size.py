"""The size of each arm's model: as its config states it, else as its server's ``/v1/models`` says.

vLLM's and TGI's model listings say nothing of size; llama.cpp's server puts ``n_params`` and ``size``
(bytes) in each model's ``meta``, and other servers use keys such as ``parameters`` or ``dtype``. What the
config states wins field by field; a field neither gives stays unknown, and the source says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from ..config import ModelSizeConfig, UpstreamConfig

# each field's keys in a model's entry of /v1/models (or in its "meta"), the first present wins
PARAMETER_KEYS = ("parameters", "num_parameters", "n_params", "parameter_count")
DTYPE_KEYS = ("dtype", "torch_dtype", "model_dtype", "quantization")
BYTES_KEYS = ("size_bytes", "bytes", "model_size_bytes", "size")


@dataclass(frozen=True)
class ModelSize:
    """An arm's model size; ``source`` says where each known field came from."""

    model: str
    parameters: float | None = None
    dtype: str | None = None
    bytes: int | None = None
    source: str = "not stated"

    @property
    def known(self) -> bool:
        """Return True when at least one field is known."""
        return any(v is not None for v in (self.parameters, self.dtype, self.bytes))


def _first(entry: dict[str, Any], keys: tuple[str, ...], kind: type) -> Any:
    places = [entry, entry.get("meta") if isinstance(entry.get("meta"), dict) else {}]
    for place in places:
        for key in keys:
            value = place.get(key)
            if kind is str and isinstance(value, str) and value:
                return value
            if kind is not str and isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return kind(value)
    return None


def size_from_listing(listing: Any, model: str) -> ModelSize | None:
    """Return what a ``/v1/models`` answer says of ``model``'s size, or None when it says nothing."""
    data = listing.get("data") if isinstance(listing, dict) else None
    entry = next((m for m in data if isinstance(m, dict) and m.get("id") == model), None) if isinstance(
        data, list) else None
    if entry is None:
        return None
    size = ModelSize(model, _first(entry, PARAMETER_KEYS, float), _first(entry, DTYPE_KEYS, str),
                     _first(entry, BYTES_KEYS, int), "the server's /v1/models")
    return size if size.known else None


def stated_size(up: UpstreamConfig) -> ModelSize | None:
    """Return the model size the config states for this upstream, or None."""
    stated: ModelSizeConfig | None = up.serving.model_size if up.serving is not None else None
    if stated is None:
        return None
    size = ModelSize(up.model or "", stated.parameters, stated.dtype, stated.bytes, "the config")
    return size if size.known else None


def model_size(up: UpstreamConfig, timeout_s: float = 5.0) -> tuple[ModelSize, str | None]:
    """Return the upstream model's size (the config's fields first, the server's for the rest) and, when the
    server was asked and could not answer, why."""
    model = up.model or ""
    stated = stated_size(up)
    if stated is not None and None not in (stated.parameters, stated.dtype, stated.bytes):
        return stated, None
    headers = {"authorization": f"Bearer {key}"} if (key := up.api_key()) else {}
    try:
        resp = httpx.get(f"{up.base_url}/models", headers=headers, timeout=timeout_s)
        resp.raise_for_status()
        served = size_from_listing(resp.json(), model)
        problem = None
    except (httpx.HTTPError, ValueError) as exc:
        served, problem = None, f"{up.base_url}/models: {type(exc).__name__}: {exc}"
    if stated is None:
        return served or ModelSize(model), problem
    if served is None:
        return stated, problem
    return ModelSize(model, stated.parameters if stated.parameters is not None else served.parameters,
                     stated.dtype or served.dtype, stated.bytes if stated.bytes is not None else served.bytes,
                     "the config and the server's /v1/models"), None
