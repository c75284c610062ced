"""Where every shard replica's data lives, and the in-process shard client: the Ray-free twin of `shards.actor`."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.collection_spec import CollectionConfig
from cluster.config import BatchSettings, MilvusConfig
from cluster.errors import ConfigError
from shards.api import EXPORT_PAGE, PointRow, ScoredId, SearchSpec, StoredPoint
from shards.backend import BackendSpec
from shards.shard import Shard


def replica_specs(collection: CollectionConfig, milvus: MilvusConfig, data_dir: str | Path,
                  server_uri: str | None = None) -> list[list[BackendSpec]]:
    """A BackendSpec per shard replica: its own milvus-lite directory, or its own collections on a server."""
    out = []
    for s in range(collection.shards):
        row = []
        for r in range(collection.replicas):
            if milvus.mode == "lite":
                path = Path(data_dir).resolve() / "milvus" / collection.name / f"s{s}_r{r}"
                path.mkdir(parents=True, exist_ok=True)
                row.append(BackendSpec(kind="lite", uri=str(path / "milvus.db")))
            else:
                uri = milvus.uri if milvus.mode == "server" else server_uri
                if not uri:
                    raise ConfigError("the bundled Milvus server is not running: no uri to connect to",
                                      field="milvus.uri")
                row.append(BackendSpec(kind="server", uri=uri, token=milvus.token, gpu=milvus.gpu))
        out.append(row)
    return out


def leftovers(collection: CollectionConfig, specs: list[list[BackendSpec]]) -> list[str]:
    """Milvus data a NEW collection would otherwise adopt: milvus-lite databases already in its replicas'
    directories, or collections of its names already on the server (another prism sharing that server, a
    collection whose drop failed). Creating a collection refuses when there are any."""
    from shards.backend import MilvusBackend
    from shards.shard import milvus_collection_name

    found: list[str] = []
    servers: dict[str, MilvusBackend] = {}
    try:
        for s, row in enumerate(specs):
            for r, spec in enumerate(row):
                if spec.kind == "lite":
                    db = Path(spec.uri)
                    if db.exists() or any(db.parent.glob(f"{db.name}*")):
                        found.append(str(db))
                    continue
                backend = servers.get(spec.uri)
                if backend is None:
                    backend = servers[spec.uri] = MilvusBackend(spec)
                found += [name for space in collection.spaces
                          if backend.has_collection(name := milvus_collection_name(collection.name, space, s, r))]
    finally:
        for backend in servers.values():
            backend.close()
    return found


class LocalShardClient:
    """`ShardApi` over a plain Shard in this process, each call in a worker thread."""

    def __init__(self, shard: Shard):
        self.target = shard
        self.shard = shard.shard
        self.replica = shard.replica

    async def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        return await asyncio.to_thread(self.target.search_many, specs)

    async def get(self, ids: Sequence[str], with_vectors: Sequence[str] = ()) -> dict[str, StoredPoint]:
        return await asyncio.to_thread(self.target.get, ids, with_vectors)

    async def upsert(self, points: Sequence[PointRow], wait: bool = True) -> int:
        return await asyncio.to_thread(self.target.upsert, points, wait)

    async def delete(self, ids: Sequence[str], wait: bool = True) -> int:
        return await asyncio.to_thread(self.target.delete, ids, wait)

    async def export(self, ids: Sequence[str]) -> list[PointRow]:
        return await asyncio.to_thread(self.target.export, ids)

    async def export_page(self, after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
        return await asyncio.to_thread(self.target.export_page, after, limit)

    async def ids(self) -> list[str]:
        return await asyncio.to_thread(self.target.ids)

    async def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        return await asyncio.to_thread(self.target.scan, after, limit, expr)

    async def count(self) -> dict[str, int]:
        return await asyncio.to_thread(self.target.count)

    async def ping(self) -> dict[str, Any]:
        return self.target.ping()

    async def digest(self, rescan_after_s: float | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.target.digest, rescan_after_s)

    async def bucket_hashes(self, buckets: Sequence[int]) -> dict[str, int]:
        return await asyncio.to_thread(self.target.bucket_hashes, buckets)

    async def node(self) -> str | None:
        return self.target.node()


def local_shards(collection: CollectionConfig, specs: list[list[BackendSpec]], create: bool = True,
                 first_shard: int = 0, batching: BatchSettings | None = None) -> list[list[LocalShardClient]]:
    """In-process shards: the Ray-free twin of `shards.actor.start_ray_shards`.

    `specs[i]` belongs to shard `first_shard + i` (resharding starts only the added shards)."""
    clients = []
    for i, row in enumerate(specs):
        s = first_shard + i
        clients.append([LocalShardClient(Shard(collection, s, r, spec, batching)) for r, spec in enumerate(row)])
    if create:
        targets = [c.target for row in clients for c in row]
        if all(t.spec.kind == "server" for t in targets):
            # As start_ray_shards does (each actor at once): a new collection on the Milvus server waits ~3 s for
            # its load (queryCoord's observer ticks, not work), so one after another 8 replicas took 25 s.
            with ThreadPoolExecutor(max_workers=min(len(targets), 16) or 1) as pool:
                list(pool.map(lambda t: t.create(), targets))
        else:  # milvus-lite runs inside this process: one at a time
            for t in targets:
                t.create()
    return clients


def stop_local_shards(clients: Sequence[Sequence[LocalShardClient]], drop: bool = False) -> None:
    """Close (or drop) every replica's collections: the twin of `shards.actor.stop_ray_shards`."""
    targets = [c.target for row in clients for c in row]
    end = (lambda t: t.drop()) if drop else (lambda t: t.close())
    if targets and all(t.spec.kind == "server" for t in targets):  # a drop waits on the server, as a create does
        with ThreadPoolExecutor(max_workers=min(len(targets), 16)) as pool:
            list(pool.map(end, targets))
    else:
        for t in targets:
            end(t)
