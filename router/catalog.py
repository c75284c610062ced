"""The collection catalog in the data dir, shared by every ingress replica: one JSON file per collection.

A file is the collection's config, plus `_catalog: {"version", "paused"}`: the version grows by one with every
change, and `paused` says a reshard is moving points (writes are refused meanwhile, by every ingress). Changes are
read-modify-write under an exclusive lock on `catalog/.catalog.lock`, applied to what the file holds at that moment
(`update`), so an ingress that had an older view merges into the newer state instead of overwriting it; readers
notice a change by the file's stat and reload. A file without `_catalog` (written before versions) reads as
version 0. Pure: file I/O only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.config import CollectionConfig
from cluster.errors import CollectionNotFound

META = "_catalog"


@dataclass(frozen=True)
class Entry:
    config: CollectionConfig
    version: int = 0
    paused: str | None = None

    def with_(self, **changes) -> "Entry":
        return replace(self, **changes)


Stamp = tuple[int, int, int]


class Catalog:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def stamp(self, name: str) -> Stamp | None:
        """Changes whenever the file is replaced (inode, time, size): a cheap check before a read."""
        try:
            st = self.path(name).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self, name: str) -> Entry | None:
        try:
            raw = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return None
        meta = raw.pop(META, None) or {}
        return Entry(CollectionConfig.model_validate(raw), int(meta.get("version", 0)), meta.get("paused"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".catalog.lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write(self, entry: Entry) -> None:
        data = json.loads(entry.config.model_dump_json())
        data[META] = {"version": entry.version, "paused": entry.paused}
        path = self.path(entry.config.name)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def create(self, config: CollectionConfig) -> Entry:
        """Record a new collection (replacing a file left by one deleted meanwhile)."""
        with self._locked():
            old = self.read(config.name)
            entry = Entry(config, (old.version if old else 0) + 1)
            self._write(entry)
            return entry

    def update(self, name: str, change: Callable[[Entry], Entry]) -> Entry:
        """Apply `change` to the entry as it is now (whoever wrote it last) and store the result, one version on."""
        with self._locked():
            current = self.read(name)
            if current is None:
                raise CollectionNotFound(f"collection {name!r} not found")
            new = change(current).with_(version=current.version + 1)
            self._write(new)
            return new

    def delete(self, name: str) -> None:
        with self._locked():
            self.path(name).unlink(missing_ok=True)
