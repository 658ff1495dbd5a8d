"""A prompt's topic as a small hashed vector (feature hashing of word n-grams), never its words.

The event shipper turns the start of the last user message into :data:`SKETCH_DIMS` signed
counts of its words and word pairs, hashed into buckets (the "hashing trick", as scikit-learn's
``HashingVectorizer`` with ``alternate_sign=True``: inner products are preserved on average), then
L2-normalised and quantised to signed bytes. Only those bytes travel on the exposure event
(``features.topic``, base64): the words cannot be read back from them. The drift detector
compares where prompts fall in this space (drift/topics.py).

Hand-written rather than scikit-learn's ``HashingVectorizer``: the proxy image does not carry
scikit-learn (it is the drift extra's), every proxy worker runs a shipper process, and this is
twenty lines of stdlib (``zlib.crc32``, stable across processes and versions, unlike ``hash()``).
"""

from __future__ import annotations

import base64
import math
import re
import zlib

SKETCH_DIMS = 128
_WORD = re.compile(r"[^\W\d_]{3,}")  # words of 3+ letters in any script: drops many function words
# English function words of three letters or more: without them the sketch is about the subject,
# not about how the sentence is built (a question's "what", "does", "your").
STOP_WORDS = frozenset("""
about above after again against all also and any are aren because been before being below between
both but can cannot could did didn does doesn doing don down during each few for from further had
hadn has hasn have haven having her here hers herself him himself his how i'm into isn its itself
just let more most mustn myself nor not now off once only other ought our ours ourselves out over
own same shan she should shouldn some such than that the their theirs them themselves then there
these they this those through too under until very was wasn were weren what when where which while
who whom why will with won would wouldn you your yours yourself yourselves yes okay please thanks
thank tell know like get got really well one much many make want think something anything way thing
things
""".split())  # noqa: SIM905 (a word list reads best as words)


def _signed_buckets(text: str, dims: int) -> dict[int, float]:
    """Return the text's hashed words and word pairs as {bucket: signed count} (only the buckets it fills)."""
    words = [w.encode() for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
    crc32 = zlib.crc32
    hashes = [crc32(w) for w in words]
    # a pair "a b" continues a's CRC with " " and b (zlib.crc32's second argument): no string built per pair
    hashes += [crc32(b, crc32(b" ", h)) for h, b in zip(hashes, words[1:], strict=False)]
    buckets: dict[int, float] = {}  # sparse: a prompt fills few of the buckets
    get = buckets.get
    for h in hashes:
        i = h % dims
        buckets[i] = get(i, 0.0) + (1.0 if h & 0x80000000 else -1.0)
    return buckets


def _unit_buckets(text: str, dims: int) -> dict[int, float]:
    """Return the filled buckets of the text's L2-normalised hashed vector, {bucket: value} (empty for no words)."""
    buckets = _signed_buckets(text, dims)
    norm = math.sqrt(sum(v * v for v in buckets.values()))
    return {i: v / norm for i, v in buckets.items()} if norm else {}


def sketch_vector(text: str, dims: int = SKETCH_DIMS) -> list[float]:
    """Return the L2-normalised hashed vector of the text's words and word pairs (all 0 for no words)."""
    vec = [0.0] * dims
    for i, v in _unit_buckets(text, dims).items():
        vec[i] = v
    return vec


def _quantised(v: float) -> int:
    return max(-127, min(127, round(v * 127))) & 0xFF


def encode_sketch(vec: list[float]) -> str:
    """Return the vector quantised to signed bytes (x127), base64: what the event carries."""
    raw = bytearray(len(vec))
    for i, v in enumerate(vec):
        if v:
            raw[i] = _quantised(v)
    return base64.b64encode(raw).decode()


def decode_sketch(encoded: str, dims: int = SKETCH_DIMS) -> list[float] | None:
    """Return the vector of an encoded sketch, or None when it is missing or not a sketch of ``dims``."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) != dims:
        return None
    return [(b - 256 if b > 127 else b) / 127 for b in raw]


def topic_sketch(text: str) -> str:
    """Return the encoded sketch of a text (the ``topic`` feature of an exposure).

    ``encode_sketch(sketch_vector(text))``, computed over the filled buckets only (tests/test_features.py
    compares the two)."""
    raw = bytearray(SKETCH_DIMS)
    for i, v in _unit_buckets(text, SKETCH_DIMS).items():
        if v:
            raw[i] = _quantised(v)
    return base64.b64encode(raw).decode()
