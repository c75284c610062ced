"""`prism verify` against the live server: no drift on the loaded catalog; a document removed from Elasticsearch
behind prism's back is named, and the command exits 1."""
from __future__ import annotations

import json

import httpx

from tests.e2e.conftest import prism_cli


def test_prism_verify_reports_drift_between_the_shards_and_elasticsearch(products, prism_server):
    args = ("verify", "--collection", "products", "--data-dir", str(prism_server.data_dir))
    clean = prism_cli(*args, check=False)
    assert clean.returncode == 0 and "no drift" in clean.stdout, clean.stdout + clean.stderr
    es = json.loads((prism_server.data_dir / "prism-instance.json").read_text())["elasticsearch"]
    c = prism_server.client
    scroll = c.post("/v1/collections/products/points/scroll", json={"limit": 1, "with_vectors": True})
    victim = scroll.json()["points"][0]
    httpx.delete(f"{es}/prism-products/_doc/{victim['id']}", params={"refresh": "true"}).raise_for_status()
    try:
        drift = prism_cli(*args, check=False)
        assert drift.returncode == 1 and victim["id"] in drift.stdout, drift.stdout + drift.stderr
        report = c.get("/v1/collections/products/verify").json()
        assert report["drift"] and report["sample_missing"] == [victim["id"]] and report["extra_in_elasticsearch"] == 0
    finally:  # put it back through prism: the upsert re-indexes it
        c.post("/v1/collections/products/points", json={"points": [victim]}).raise_for_status()
    assert not c.get("/v1/collections/products/verify").json()["drift"]


def test_prism_verify_names_a_replica_altered_behind_prisms_back(prism_server):
    """Two replicas per shard on the bundled Milvus server; a row written straight into one replica's Milvus
    collection is named by `prism verify` (shard, replica, id) with exit 1, and by the HTTP answer."""
    from pymilvus import MilvusClient

    c = prism_server.client
    spec = {"spaces": {"v": {"dim": 4, "metric": "cosine", "index": {"type": "FLAT"}}}, "shards": 2, "replicas": 2}
    assert c.put("/v1/collections/twins", json=spec).status_code == 200
    try:
        points = [{"id": f"t{i}", "payload": {"n": i}, "vectors": {"v": [1.0, float(i), 0.5, 0.25]}} for i in range(12)]
        c.post("/v1/collections/twins/points", json={"points": points}).raise_for_status()
        args = ("verify", "--collection", "twins", "--data-dir", str(prism_server.data_dir))
        clean = prism_cli(*args, check=False)
        assert clean.returncode == 0 and "no drift" in clean.stdout, clean.stdout + clean.stderr
        shard = next(s["shard"] for s in c.get("/v1/collections/twins").json()["shards"] if s["counts"].get("v"))
        held = [p["id"] for p in c.post("/v1/collections/twins/points/scroll", json={"limit": 50}).json()["points"]]
        milvus = MilvusClient(uri=prism_server.milvus)
        name = f"twins__v__s{shard}_r1"
        victim = next(i for i in held if milvus.query(name, filter=f'id == "{i}"', output_fields=["id"],
                                                        consistency_level="Strong"))
        milvus.upsert(name, [{"id": victim, "vec": [0.0, 1.0, 0.0, 0.0], "payload": {"n": -1}, "meta": {}}])
        drift = prism_cli(*args, check=False)
        out = drift.stdout + drift.stderr
        assert drift.returncode == 1 and f"shard {shard} replica" in out and victim in out, out
        report = c.get("/v1/collections/twins/verify").json()
        assert not report["replicas_equal"] and report["drift"]
        assert [(d["shard"], d["ids"]) for d in report["replica_differences"]] == [(shard, [victim])]
        milvus.close()
    finally:
        c.delete("/v1/collections/twins")
