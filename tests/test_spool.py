"""The on-disk spool: order, crash recovery (torn tail, stale cursor), bounds, drop policies, locking."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from splitwatch.service.delivery.spool import Spool, SpoolLockedError


def _spool(d: Path, **kw) -> Spool:
    opts = {"max_bytes": 10 * 1024 * 1024, "segment_bytes": 4096, "fsync": "always"}
    opts.update(kw)
    return Spool(d, **opts)


def _records(n: int, start: int = 0, size: int = 100) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), f"v{i}:".encode().ljust(size, b".")) for i in range(start, start + n)]


def _drain(s: Spool, batch: int = 7) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        recs, pos = s.read(batch)
        if not recs:
            return out
        out.extend(recs)
        s.commit(pos, len(recs))


def test_fifo_across_segments_and_cleanup(tmp_path: Path) -> None:
    s = _spool(tmp_path)
    recs = _records(200)
    assert s.append(recs) == 0
    assert s.pending_events == 200 and len(list(tmp_path.glob("*.seg"))) > 3
    assert _drain(s) == recs
    assert s.pending_events == 0 and s.pending_bytes == 0
    s.append(_records(1, 500))
    assert len(list(tmp_path.glob("*.seg"))) <= 2  # acknowledged segments are deleted
    s.close()


def test_restart_resumes_at_the_cursor(tmp_path: Path) -> None:
    s = _spool(tmp_path)
    recs = _records(120)
    s.append(recs)
    got = []
    for _ in range(5):
        r, pos = s.read(10)
        got.extend(r)
        s.commit(pos, len(r))
    s.close()
    s2 = _spool(tmp_path)
    assert s2.pending_events == 120 - len(got)  # reads stop at segment ends, so fewer than 50
    assert got + _drain(s2) == recs
    s2.close()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_sigkill_keeps_everything_not_acknowledged(tmp_path: Path, fsync: str) -> None:
    # A child process appends 50 records, acknowledges 20, reads 10 more without acknowledging, and is
    # SIGKILLed. The next owner must find every unacknowledged record, in order. With fsync "always" the
    # cursor is exact; otherwise it may lag (written once per interval), so acknowledged records can come
    # back too: duplicates, which consumers drop by event_id, never a loss.
    script = f"""
import os, signal
from splitwatch.service.delivery.spool import Spool
s = Spool({str(tmp_path)!r}, max_bytes=1 << 24, segment_bytes=1024, fsync={fsync!r}, fsync_interval_ms=60000)
s.append([(b"k%d" % i, b"v%d" % i) for i in range(50)])
for _ in range(2):
    r, pos = s.read(10)
    s.commit(pos, len(r))
s.read(10)
os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    s = _spool(tmp_path)
    keys = [k for k, _ in _drain(s)]
    expected = [b"k%d" % i for i in range(20, 50)]
    if fsync == "always":
        assert keys == expected and s.pending_events == 0
    else:
        assert keys[-30:] == expected and keys == [b"k%d" % i for i in range(50 - len(keys), 50)]
    s.close()


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    s = _spool(tmp_path)
    s.append(_records(5))
    s.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a header that promises 256 bytes, then a crash
    s2 = _spool(tmp_path)
    assert s2.pending_events == 5
    assert [k for k, _ in _drain(s2)] == [f"k{i}".encode() for i in range(5)]
    s2.append(_records(1, 99))
    assert [k for k, _ in _drain(s2)] == [b"k99"]
    s2.close()


def test_corrupt_record_is_skipped_and_counted(tmp_path: Path) -> None:
    s = _spool(tmp_path, segment_bytes=1 << 20)
    s.append(_records(3))
    s.close()
    seg = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[20] ^= 0xFF  # flip a byte inside the first record's payload
    seg.write_bytes(bytes(data))
    s2 = _spool(tmp_path, segment_bytes=1 << 20)
    assert [k for k, _ in _drain(s2)] == [b"k1", b"k2"]
    assert s2.corrupt_records == 1
    s2.close()


def test_drop_newest_when_full(tmp_path: Path) -> None:
    s = _spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024, full_policy="drop_newest")
    recs = _records(1000)
    dropped = s.append(recs)
    kept = _drain(s)
    assert dropped > 0 and dropped + len(kept) == 1000
    assert kept == recs[: len(kept)]  # the oldest are kept, in order
    s.close()


def test_drop_oldest_when_full(tmp_path: Path) -> None:
    s = _spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024, full_policy="drop_oldest")
    recs = _records(1000)
    assert s.append(recs) == 0
    lost = s.take_dropped_oldest()
    kept = _drain(s)
    assert lost > 0 and lost + len(kept) == 1000
    assert kept == recs[lost:]  # the newest are kept, in order
    assert s.take_dropped_oldest() == 0
    s.close()


def test_one_owner_per_directory(tmp_path: Path) -> None:
    s = _spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        _spool(tmp_path)
    s.close()
    _spool(tmp_path).close()
