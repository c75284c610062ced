"""The collection catalog in the data dir, shared by every ingress replica: one JSON file per collection.

A file is the collection's config, plus `_catalog: {"version", "paused", "placement", "moving"}`: the version grows
by one with every change, `paused` says a reshard is moving points (writes are refused meanwhile, by every ingress),
`placement` is a vector-routed collection's trained placement (router.routing.placement.Placement.to_dict, centroids
included: a restart routes as before) and `moving` says a rebalance was moving points to it. Changes are
read-modify-write under an exclusive lock on `catalog/.catalog.lock`, applied to what the file holds at that moment
(`update`), so an ingress that had an older view merges into the newer state instead of overwriting it; readers
notice a change by the file's stat and reload. A file without `_catalog` (written before versions) reads as
version 0.

Paths are built only from names that pass the name rule (cluster.names), so no request can make one point
elsewhere (`../x`, an absolute path); files whose stem is not a valid name, or that hold another collection's
config, are not prism's and are ignored. `create` never takes over a file that is there (another ingress made the
collection meanwhile, or something prism did not write): a 409. Pure: file I/O only.

Aliases (router.collection.aliases) live in one file, `catalog/.aliases.json` (`{"version", "aliases": {alias:
collection}}`), changed under the same lock, so an alias and a collection can never take one name between two
ingress replicas; readers notice a switch the way they notice a collection change, by the file's stat.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.collection_spec import CollectionConfig
from cluster.errors import CollectionExists, CollectionNotFound
from cluster.names import check_name, name_problem
from router.collection.aliases import check_alias, check_collection_name

META = "_catalog"
ALIASES = ".aliases.json"  # not a valid collection name: names() never lists it

log = logging.getLogger("prism.catalog")


@dataclass(frozen=True)
class Entry:
    config: CollectionConfig
    version: int = 0
    paused: str | None = None
    placement: dict | None = None  # a trained placement (Placement.to_dict); None: the routing setting's own
    moving: bool = False  # a rebalance is (or was, when its process stopped) moving points to `placement`

    def with_(self, **changes) -> "Entry":
        return replace(self, **changes)


Stamp = tuple[int, int, int]


class Catalog:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._aliases: tuple[Stamp | None, int, dict[str, str]] = (None, 0, {})  # (stamp, version, map) last read

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if name_problem(p.stem) is None)

    def stamp(self, name: str) -> Stamp | None:
        """Changes whenever the file is replaced (inode, time, size): a cheap check before a read."""
        try:
            st = self.path(name).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self, name: str) -> Entry | None:
        """The entry kept under `name`; None when there is none or the file holds another collection's config."""
        try:
            raw = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return None
        meta = raw.pop(META, None) or {}
        cfg = CollectionConfig.model_validate(raw)
        if cfg.name != name:
            log.warning("catalog file %s.json holds collection %r: ignored", name, cfg.name)
            return None
        return Entry(cfg, int(meta.get("version", 0)), meta.get("paused"), meta.get("placement"),
                     bool(meta.get("moving", False)))

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
        if entry.placement is not None or entry.moving:  # only where trained: other files stay as they were
            data[META].update(placement=entry.placement, moving=entry.moving)
        path = self.path(entry.config.name)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def create(self, config: CollectionConfig) -> Entry:
        """Record a new collection: a 409 if a file is there under its name (made through another ingress since
        the caller looked, or not prism's) or a name differing only in case is recorded."""
        with self._locked():
            if self.path(config.name).exists():
                raise CollectionExists(f"collection {config.name!r} already exists")
            check_collection_name(config.name, self._read_aliases()[1])
            twin = next((n for n in self.names() if n.lower() == config.name.lower()), None)
            if twin is not None:
                raise CollectionExists(f"collection {twin!r} exists; names may not differ only in case "
                                       f"({config.name!r})", field="name")
            entry = Entry(config, 1)
            self._write(entry)
            return entry

    def ensure(self, config: CollectionConfig) -> Entry:
        """A collection declared in the config: its entry as recorded (another ingress starting with the same
        config may have written it first), else recorded now."""
        with self._locked():
            current = self.read(config.name)
            if current is not None:
                return current
            check_collection_name(config.name, self._read_aliases()[1])
            entry = Entry(config, 1)
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

    # -- aliases ---------------------------------------------------------------------------------------------------
    def _read_aliases(self) -> tuple[int, dict[str, str]]:
        """(version, {alias: collection}) as the file holds them now (a stat, and a read only when it changed)."""
        path = self.dir / ALIASES
        try:
            st = path.stat()
        except FileNotFoundError:
            return 0, {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._aliases
        if seen[0] != stamp:
            raw = json.loads(path.read_text())
            seen = (stamp, int(raw.get("version", 0)), {str(a): str(c) for a, c in raw.get("aliases", {}).items()
                                                         if name_problem(a) is None})
            self._aliases = seen
        return seen[1], seen[2]

    def aliases(self) -> dict[str, str]:
        """Every alias and the collection it points to, as recorded by any ingress replica."""
        return dict(self._read_aliases()[1])

    def resolve(self, name: str) -> str:
        """The collection `name` stands for: an alias's target, else `name` itself."""
        return self._read_aliases()[1].get(name, name)

    def _write_aliases(self, version: int, aliases: dict[str, str]) -> None:
        path = self.dir / ALIASES
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": version, "aliases": dict(sorted(aliases.items()))}, indent=2))
        os.replace(tmp, path)  # one rename: a reader sees the old target or the new one, never neither

    def set_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` (creating it or switching it); the collection it pointed to before."""
        with self._locked():
            version, current = self._read_aliases()
            check_alias(alias, collection, self.names(), current)
            self._write_aliases(version + 1, {**current, alias: collection})
            return current.get(alias)

    def delete_alias(self, alias: str) -> str:
        """Remove `alias`; the collection it pointed to (404 when there is no such alias)."""
        check_name(alias, field="alias", what="alias")
        with self._locked():
            version, current = self._read_aliases()
            if alias not in current:
                raise CollectionNotFound(f"alias {alias!r} not found", field="alias")
            self._write_aliases(version + 1, {a: c for a, c in current.items() if a != alias})
            return current[alias]
