"""The shipper's state shared with its worker (for /readyz and the worker's gauges): slots of a shared
array of doubles, and the last error's name in a shared byte string."""

from __future__ import annotations

from dataclasses import dataclass

CONNECTED, SENT, SPOOL_DROPPED, PENDING_EVENTS, PENDING_BYTES, STATE = range(6)
STATUS_SLOTS = 6
STATE_STARTING, STATE_RUNNING, STATE_LOCKED, STATE_DONE = 0.0, 1.0, -1.0, 2.0
ERROR_BYTES = 128


@dataclass
class LocalErrorSlot:
    """The last error's name where no worker reads it (a spool adopted from another worker)."""

    value: bytes = b""


def local_status() -> list[float]:
    """Return status slots that no worker reads (a spool adopted from another worker)."""
    return [0.0] * STATUS_SLOTS
