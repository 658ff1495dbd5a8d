"""The worker-to-shipper pipe's framing: records as (key, event JSON, text sample), in length-prefixed
frames (``>H`` key length, ``>I`` value length, ``>H`` sample length, then the bytes)."""

from __future__ import annotations

import struct

_FRAME = struct.Struct(">HIH")
MAX_KEY_BYTES = 0xFFFF  # the pipe's and the spool's frames give a key two bytes of length
MAX_VALUE_BYTES = 0xFFFFFFFF

PipeRecord = tuple[bytes, bytes, bytes]
"""(key, event JSON, text sample) as the worker hands it over: the sample (a kind byte, then the
start of the prompt or the answer) is b"" for events without text."""
MAX_SAMPLE_BYTES = 1 + 4 + 2 * (1 + 16384)  # a shadow pair: two stream samples
"""A text sample's cap on the pipe: 4,000 characters of UTF-8, or the first 16 KB of an SSE answer."""


def frame_error(key: bytes, value: bytes) -> str | None:
    """Return why a record cannot be framed for the pipe and the spool, or None when it can."""
    if len(key) > MAX_KEY_BYTES:
        return f"key of {len(key)} bytes; a key must fit in {MAX_KEY_BYTES} bytes"
    if len(value) > MAX_VALUE_BYTES:
        return f"value of {len(value)} bytes"
    return None


def encode_batch(records: list[PipeRecord]) -> bytes:
    """Return records framed for the pipe: >H key length, >I value length, >H sample length, then the bytes."""
    return b"".join(_FRAME.pack(len(k), len(v), len(s)) + k + v + s for k, v, s in records)


def decode_batch(blob: bytes) -> list[PipeRecord]:
    """Return the records of a blob made by :func:`encode_batch`."""
    out = []
    offset = 0
    while offset < len(blob):
        klen, vlen, slen = _FRAME.unpack_from(blob, offset)
        offset += _FRAME.size
        k, v = blob[offset:offset + klen], blob[offset + klen:offset + klen + vlen]
        out.append((k, v, blob[offset + klen + vlen:offset + klen + vlen + slen]))
        offset += klen + vlen + slen
    return out
