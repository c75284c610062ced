"""Core against real Milvus (lite and the bundled 2.3 server) and real Ray: congruence, writes, bad input."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.errors import InvalidRequest, SpaceNotFound
from deploy.datasets import gaussian_mixture, query_vectors
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest
from shards.api import ShardApi
from shards.local import local_shards, replica_specs

N = 2_000  # 500 a shard at 4: each shard's top 20 differs from the global one, which the merge must get right
DIMS = {"text": 384, "image": 512}
_names = itertools.count()


def collection(shards: int, index: str = "FLAT", **kw) -> CollectionConfig:
    spaces = {s: {"dim": d, "metric": "cosine", "index": {"type": index}} for s, d in DIMS.items()}
    return CollectionConfig(name=f"c{next(_names)}_{shards}", spaces=spaces, shards=shards, **kw)


@pytest.fixture(scope="module")
def data():
    vecs = {s: gaussian_mixture(N, d, seed=i + 1) for i, (s, d) in enumerate(DIMS.items())}
    points = [
        Point(id=f"p{i}", payload={"n": i, "tag": f"t{i % 7}"},
              vectors={s: vecs[s][i].tolist() for s in DIMS})
        for i in range(N)
    ]
    queries = {s: query_vectors(6, d, seed=99, base_seed=i + 1) for i, (s, d) in enumerate(DIMS.items())}
    return points, queries


def load(coord: Coordinator, points, batch: int = 1000) -> None:
    for i in range(0, len(points), batch):
        asyncio.run(coord.upsert(points[i : i + batch]))


def requests(queries) -> list[QueryRequest]:
    out = []
    for qi in range(len(queries["text"])):
        pre = [{"space": s, "vector": queries[s][qi].tolist(), "limit": 20} for s in DIMS]
        out.append(QueryRequest(prefetch=pre, fusion={"method": "rrf"}, limit=10))
        out.append(QueryRequest(prefetch=pre, fusion={"method": "dbsf"}, limit=10, with_payload=False))
        out.append(QueryRequest(prefetch=pre, fusion={"method": "rrf", "weights": [1.0, 3.0]}, limit=10, offset=3))
        out.append(QueryRequest(prefetch=pre[:1], fusion={"method": "none"}, limit=15))
    return out


def answers(coord: Coordinator, reqs):
    return [asyncio.run(coord.query(r)) for r in reqs]


def assert_same(a, b):
    for ra, rb in zip(a, b, strict=True):
        assert [h.id for h in ra.hits] == [h.id for h in rb.hits]
        np.testing.assert_allclose([h.score for h in ra.hits], [h.score for h in rb.hits], atol=1e-5)
        assert [h.payload for h in ra.hits] == [h.payload for h in rb.hits]
        assert not ra.partial and not rb.partial


def local_clients(coord: Coordinator) -> list[list[ShardApi]]:
    return [sh.clients for sh in coord.shards]


def plain(cfg, milvus_backend, tmp_path):
    milvus, uri = milvus_backend
    return Coordinator.from_clients(cfg, local_shards(cfg, replica_specs(cfg, milvus, tmp_path / cfg.name, uri)))


@pytest.mark.slow
def test_four_shards_answer_exactly_like_one(milvus_backend, tmp_path, data):
    points, queries = data
    one, four = plain(collection(1), milvus_backend, tmp_path), plain(collection(4), milvus_backend, tmp_path)
    load(one, points)
    load(four, points)
    reqs = requests(queries)
    got_one, got_four = answers(one, reqs), answers(four, reqs)
    assert all(len(r.hits) >= 10 for r in got_one[:1])
    assert_same(got_one, got_four)
    # Every shard holds a real share of the data (ring balance) and the counts add up.
    counts = asyncio.run(four.counts())
    per_shard = [row[0]["text"] for row in counts]
    assert sum(per_shard) == N and min(per_shard) > N / 8
    assert sum(row[0]["image"] for row in counts) == N


def test_the_plain_shard_and_both_clients_share_one_contract():
    """Every ShardApi method exists with the same parameters on the plain Shard, the local and the Ray client."""
    import inspect

    from shards.actor import RayShardClient
    from shards.local import LocalShardClient
    from shards.shard import Shard

    methods = [m for m in vars(ShardApi) if not m.startswith("_") and callable(getattr(ShardApi, m))]
    assert sorted(methods) == ["bucket_hashes", "count", "delete", "digest", "export", "export_page", "get", "ids", "node",
                              "ping", "scan", "search_many", "upsert"]
    for impl in (Shard, LocalShardClient, RayShardClient):
        for m in methods:
            want = list(inspect.signature(getattr(ShardApi, m)).parameters)
            got = [p for p in inspect.signature(getattr(impl, m)).parameters if p != "_ray_trace_ctx"]  # Ray's own
            assert got == want, (impl.__name__, m)
    for client in (LocalShardClient, RayShardClient):
        assert all(inspect.iscoroutinefunction(getattr(client, m)) for m in methods), client


@pytest.mark.slow
def test_ray_path_equals_plain_path(ray_session, milvus_backend, tmp_path, data):
    from shards.actor import start_ray_shards, stop_ray_shards

    points, queries = data
    milvus, uri = milvus_backend
    cfg_plain, cfg_ray = collection(4), collection(4)
    local = plain(cfg_plain, milvus_backend, tmp_path)
    clients = start_ray_shards(cfg_ray, replica_specs(cfg_ray, milvus, tmp_path / cfg_ray.name, uri))
    try:
        assert all(isinstance(c, ShardApi) for row in clients + local_clients(local) for c in row)
        # A congruence test, not a timeout test: on a loaded CI machine a lite write once took past the default 10 s.
        remote = Coordinator.from_clients(cfg_ray, clients, timeout_s=60.0)
        load(local, points)
        load(remote, points)
        reqs = requests(queries)[:8]
        assert_same(answers(local, reqs), answers(remote, reqs))
        # A request error raised inside the actor arrives as its own type, not as a shard failure.
        bad = QueryRequest(prefetch=[{"space": "text", "vector": [0.0] * 384}], limit=5)
        bad.prefetch[0].space = "nope"
        with pytest.raises(SpaceNotFound):
            asyncio.run(remote.query(bad))
    finally:
        stop_ray_shards(clients, drop=True)


def test_upsert_query_delete_and_counts(milvus_backend, tmp_path):
    cfg = collection(3, index="HNSW")
    coord = plain(cfg, milvus_backend, tmp_path)
    vecs = {s: gaussian_mixture(300, d, seed=7) for s, d in DIMS.items()}
    pts = [Point(id=f"x{i}", payload={"i": i}, vectors={s: vecs[s][i].tolist() for s in DIMS}) for i in range(300)]
    asyncio.run(coord.upsert(pts))
    probe = QueryRequest(prefetch=[{"space": "image", "vector": vecs["image"][42].tolist()}],
                         fusion={"method": "none"}, limit=3, with_vectors=["text"])
    top = asyncio.run(coord.query(probe)).hits[0]
    assert top.id == "x42" and top.payload == {"i": 42} and top.score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(top.vectors["text"], vecs["text"][42], atol=1e-6)
    # Upsert overwrites in place: same id, new payload, count unchanged.
    asyncio.run(coord.upsert([Point(id="x42", payload={"i": -1}, vectors={s: vecs[s][42].tolist() for s in DIMS})]))
    assert asyncio.run(coord.query(probe)).hits[0].payload == {"i": -1}
    counts = asyncio.run(coord.counts())
    assert sum(row[0]["text"] for row in counts) == 300
    assert all(row[0]["text"] > 0 for row in counts)
    # Each point lives on the shard the ring names, and only there.
    for pid in ("x1", "x42", "x299"):
        owner = coord.shard_of(pid)
        for s, row in enumerate(sh.clients for sh in coord.shards):
            held = asyncio.run(row[0].get([pid]))
            assert (pid in held) == (s == owner)
    deleted = asyncio.run(coord.delete(["x42", "x43", "missing"]))
    assert deleted.deleted == 2
    after = asyncio.run(coord.query(probe))
    assert "x42" not in [h.id for h in after.hits]
    assert sum(row[0]["image"] for row in asyncio.run(coord.counts())) == 298


def test_index_build_params_reach_milvus(milvus_backend, tmp_path):
    milvus, uri = milvus_backend
    cfg = CollectionConfig(name=f"idx{next(_names)}", shards=1,
                           spaces={"text": {"dim": 8, "index": {"type": "HNSW", "params": {"M": 8, "efConstruction": 40}}}})
    shard = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))[0][0].target
    desc = shard.describe_index("text")
    params = desc.get("params", desc)  # lite nests them, the server lists them flat
    assert str(params["M"]) == "8" and str(params["efConstruction"]) == "40"
    assert desc["index_type"] == "HNSW"


def test_bad_input_is_typed_and_writes_nothing(milvus_backend, tmp_path):
    cfg = collection(2, index="HNSW")
    coord = plain(cfg, milvus_backend, tmp_path)
    good = {s: [0.1] * d for s, d in DIMS.items()}
    asyncio.run(coord.upsert([Point(id="ok", vectors=good)]))
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(coord.upsert([Point(id="a", vectors=good), Point(id="b", vectors={"text": [0.1] * 3})]))
    assert exc.value.field == "points[1].vectors.text" and "expected 384 dimensions, got 3" in exc.value.message
    with pytest.raises(SpaceNotFound) as exc:
        asyncio.run(coord.upsert([Point(id="c", vectors={"audio": [0.1]})]))
    assert "'audio'" in exc.value.message
    with pytest.raises(InvalidRequest, match="NaN"):
        asyncio.run(coord.upsert([Point(id="d", vectors={"text": [float("nan")] * 384})]))
    with pytest.raises(InvalidRequest, match="no vector for any space"):
        asyncio.run(coord.upsert([Point(id="e", payload={"x": 1})]))
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(coord.query(QueryRequest(prefetch=[{"space": "image", "vector": [0.1] * 384}])))
    assert exc.value.field == "prefetch[0].vector"
    with pytest.raises(SpaceNotFound) as exc:
        asyncio.run(coord.query(QueryRequest(prefetch=[{"space": "audio", "vector": [0.1]}])))
    assert exc.value.field == "prefetch[0].space"
    assert sum(row[0]["text"] for row in asyncio.run(coord.counts())) == 1


def test_unsupported_index_type_is_refused(milvus_backend, tmp_path):
    milvus, uri = milvus_backend
    kind = "IVF_PQ" if milvus.mode == "lite" else "GPU_CAGRA"
    cfg = CollectionConfig(name=f"bad{next(_names)}", spaces={"t": {"dim": 8, "index": {"type": kind}}})
    with pytest.raises(InvalidRequest, match=kind):
        local_shards(cfg, replica_specs(cfg, milvus, tmp_path, uri))
