"""Where the lake's files live: a local directory, or an object store through pyarrow's filesystems.

``analyzer.lake_dir`` is a path (``/var/lib/splitwatch/lake``) or a URI pyarrow understands
(``s3://bucket/lake``, ``gs://bucket/lake``; options such as ``?endpoint_override=host:9000&scheme=http``
in the URI, credentials from the usual ``AWS_*`` / Google variables). Both kinds offer the same small
set of operations the lake needs, keyed by paths relative to the lake's root:

- ``write``: a whole file, visible all at once (local: a temporary file, fsync, rename; object
  store: one PUT);
- ``create_exclusive``: the commit marker, written only if no file of that name exists. This is the
  fence between analyzer replicas: two writers can never commit the same offsets of a partition
  (local: ``link(2)``, atomic; S3: a conditional PUT, ``If-None-Match: *``, through boto3; other
  stores: an existence check, not atomic, stated in docs/analyzer.md);
- ``list``, ``read``, ``delete``; and ``uri`` of a glob for the query engines.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..files import fsync_dir


def is_object_store(location: str) -> bool:
    """Return True when ``location`` is a URI with a scheme (s3://, gs://, ...) rather than a local path."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive, never a scheme here


class LocalStorage:
    """The lake in a local (or mounted, shared) directory; writes are fsynced."""

    object_store = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root).removeprefix("file://"))
        self.root.mkdir(parents=True, exist_ok=True)

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")

    def _durable_tmp(self, rel: str, data: bytes) -> tuple[Path, Path]:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path, tmp

    def write(self, rel: str, data: bytes) -> None:
        """Write the file ``rel`` whole (a reader sees the old file or the new one, never a part)."""
        path, tmp = self._durable_tmp(rel, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if it does not exist; return False (nothing written) if it does."""
        path, tmp = self._durable_tmp(rel, data)
        try:
            os.link(tmp, path)  # atomic: fails if the name exists, whoever made it
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        fsync_dir(path.parent)
        return True

    def read(self, rel: str) -> bytes:
        """Return the bytes of ``rel``."""
        return (self.root / rel).read_bytes()

    def delete(self, rel: str) -> None:
        """Delete ``rel`` if it exists."""
        (self.root / rel).unlink(missing_ok=True)

    def exists(self, rel: str) -> bool:
        """Return True when the file ``rel`` exists."""
        return (self.root / rel).is_file()

    def list(self, pattern: str) -> list[str]:
        """Return the files matching the glob ``pattern`` (relative to the root), sorted."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob(pattern) if p.is_file())

    def uri(self, pattern: str) -> str:
        """Return ``pattern`` as the engines read it (a local glob)."""
        return str(self.root / pattern)

    def __str__(self) -> str:
        return str(self.root)


class ObjectStorage:
    """The lake under a prefix of an object store, through ``pyarrow.fs`` (S3, GCS, ...)."""

    object_store = True

    def __init__(self, location: str) -> None:
        from pyarrow import fs as pafs

        self.location = location
        parts = urlsplit(location)
        self.scheme = parts.scheme
        self.fs, self.prefix = pafs.FileSystem.from_uri(location)
        self.prefix = self.prefix.rstrip("/")
        self.options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._s3: Any = None

    def key(self, rel: str) -> str:
        """Return the store's path (bucket/prefix/...) of ``rel``."""
        return f"{self.prefix}/{rel}"

    def write(self, rel: str, data: bytes) -> None:
        """Write the object ``rel`` (one PUT: readers see all of it or nothing)."""
        with self.fs.open_output_stream(self.key(rel)) as f:
            f.write(data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if no object of that name exists; return False if one does.

        On S3 the condition is the server's (``If-None-Match: *``); elsewhere it is a check before
        the write, which two writers racing within one request's time could both pass.
        """
        if self.scheme == "s3":
            return self._s3_put_if_absent(rel, data)
        if self.exists(rel):
            return False
        self.write(rel, data)
        return True

    def _s3_put_if_absent(self, rel: str, data: bytes) -> bool:
        import boto3  # pyarrow's S3 client cannot send If-None-Match
        from botocore.exceptions import ClientError

        if self._s3 is None:
            endpoint = self.options.get("endpoint_override")
            if endpoint and "://" not in endpoint:
                endpoint = f"{self.options.get('scheme', 'https')}://{endpoint}"
            self._s3 = boto3.client("s3", endpoint_url=endpoint, region_name=self.options.get("region"))
        bucket, _, key = self.key(rel).partition("/")
        try:
            self._s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def exists(self, rel: str) -> bool:
        """Return True when the object ``rel`` exists."""
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.key(rel)).type != pafs.FileType.NotFound

    def read(self, rel: str) -> bytes:
        """Return the bytes of ``rel``."""
        with self.fs.open_input_stream(self.key(rel)) as f:
            return f.read()

    def delete(self, rel: str) -> None:
        """Delete ``rel`` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.key(rel))

    def list(self, pattern: str) -> list[str]:
        """Return the objects matching the glob ``pattern`` (relative to the prefix), sorted."""
        from pyarrow import fs as pafs

        head = pattern.split("*", 1)[0]  # the directory before the first wildcard: all that is listed
        base = self.key(head.rsplit("/", 1)[0] if "/" in head else "").rstrip("/")
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        rels = (i.path[len(self.prefix) + 1:] for i in infos if i.type == pafs.FileType.File)
        return sorted(r for r in rels if fnmatch.fnmatchcase(r, pattern) and _same_depth(r, pattern))

    def uri(self, pattern: str) -> str:
        """Return ``pattern`` as the engines read it: the store's URI of the glob, without the location's
        options (the engines get the filesystem itself: :func:`..engines.attach_lake`)."""
        return f"{self.scheme}://{self.key(pattern)}"

    def __str__(self) -> str:
        return self.location


def _same_depth(path: str, pattern: str) -> bool:
    """fnmatch's ``*`` crosses '/': a glob's ``*`` does not. Return True when the depths agree."""
    return path.count("/") == pattern.count("/")


def open_storage(location: str | Path) -> LocalStorage | ObjectStorage:
    """Return the storage of the lake at ``location`` (a path, or an object store's URI)."""
    text = str(location)
    return ObjectStorage(text) if is_object_store(text) else LocalStorage(text)
