"""Where snapshots live: one small class over fsspec, the same for a local directory and an S3-compatible bucket
(s3fs). Paths inside are `<snapshot id>/<file>`; ids and file names come from router.schema.snapshots, which
allows no `..` and no absolute path, and `_full` refuses them again.
"""
from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Any

import fsspec

CHUNK = 4 * 1024 * 1024


class SnapshotStore:
    """Bytes in and out of one root (a directory or `s3://bucket/prefix`), with sha256 while reading or writing."""

    def __init__(self, url: str | Path, options: dict[str, Any] | None = None):
        url = str(url)
        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        self.url = url
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def _full(self, path: str) -> str:
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a snapshot path: {path!r}")
        return posixpath.join(self.root, path)

    def write(self, path: str, data: bytes) -> tuple[str, int]:
        """Store `data` at `path`; returns its (sha256, size)."""
        full = self._full(path)
        if self.local:
            self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
        with self.fs.open(full, "wb") as fh:
            fh.write(data)
        return hashlib.sha256(data).hexdigest(), len(data)

    def read(self, path: str) -> bytes:
        with self.fs.open(self._full(path), "rb") as fh:
            return fh.read()

    def digest(self, path: str) -> tuple[str, int] | None:
        """(sha256, size) of the file as stored, read in chunks; None if it is not there."""
        full = self._full(path)
        h, n = hashlib.sha256(), 0
        try:
            with self.fs.open(full, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
        except FileNotFoundError:
            return None
        return h.hexdigest(), n

    def exists(self, path: str) -> bool:
        full = self._full(path)
        self.fs.invalidate_cache(full)
        return self.fs.exists(full)

    def ids(self) -> list[str]:
        """The snapshot directories under the root (complete or not)."""
        self.fs.invalidate_cache(self.root)  # s3fs caches listings: another ingress may have written since
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def delete(self, snapshot_id: str) -> None:
        full = self._full(snapshot_id)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)
        self.fs.invalidate_cache()
