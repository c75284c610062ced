"""Where every shard replica's data lives, and building the shard clients for a collection."""
from __future__ import annotations

from pathlib import Path

from cluster.config import CollectionConfig, MilvusConfig
from shards.backend import BackendSpec
from shards.shard import LocalShardClient, Shard


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
                    raise ValueError("the bundled Milvus server is not running: no uri to connect to")
                row.append(BackendSpec(kind="server", uri=uri, token=milvus.token, gpu=milvus.gpu))
        out.append(row)
    return out


def local_shards(collection: CollectionConfig, specs: list[list[BackendSpec]], create: bool = True,
                 first_shard: int = 0) -> list[list[LocalShardClient]]:
    """In-process shards (threads): the Ray-free twin of `shards.actor.start_ray_shards`.

    `specs[i]` belongs to shard `first_shard + i` (resharding starts only the added shards)."""
    clients = []
    for i, row in enumerate(specs):
        s = first_shard + i
        clients.append([LocalShardClient(Shard(collection, s, r, spec)) for r, spec in enumerate(row)])
    if create:
        for row in clients:
            for c in row:
                c.target.create()
    return clients
