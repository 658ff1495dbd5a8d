"""Durable-file helpers shared by the spool and the lake: exclusive directory locks, directory fsync."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryLockedError(RuntimeError):
    """Another process holds the directory's lock."""


def lock_directory(directory: Path) -> int:
    """Take the exclusive lock ``directory/LOCK`` without waiting; return its descriptor.

    Raises DirectoryLockedError when another process (or open file) holds it. Release with
    :func:`unlock_directory`; the kernel releases it if the process dies.
    """
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryLockedError(str(directory)) from None
    return fd


def unlock_directory(fd: int) -> None:
    """Release a lock taken by :func:`lock_directory`."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that files created or renamed in it survive a machine crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
