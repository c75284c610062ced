"""`prism up --detach` / `prism down`: collections survive a restart; nothing is left running."""
from __future__ import annotations

import httpx

from cluster.services import free_port
from tests.e2e.conftest import Instance


def test_restart_keeps_collections_and_down_leaves_no_process(tmp_path):
    # No model directory and an empty Hugging Face cache: CLIP is missing whatever this machine has cached.
    (tmp_path / "hf").mkdir()
    inst = Instance(tmp_path / "data", free_port(), "lite", env={"HF_HOME": str(tmp_path / "hf"), "PRISM_MODELS_DIR": ""})
    inst.up()
    try:
        c = httpx.Client(base_url=inst.url, timeout=120)
        spec = {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 2,
                "metadata": {"i": "integer", "tag": "keyword"}}
        assert c.put("/v1/collections/keep", json=spec).status_code == 200
        pts = [{"id": f"k{i}", "payload": {"i": i, "tag": "even" if i % 2 == 0 else "odd"},
                "vectors": {"v": [1.0, i, 0.0, 1.0]}} for i in range(20)]
        assert c.post("/v1/collections/keep/points", json={"points": pts}).json()["upserted"] == 20
        # No CLIP weights: the image space is reported unavailable, never faked; other spaces answer.
        clip = c.get("/health").json()["encoders"]["clip"]
        assert clip["available"] is False and "no CLIP weights found" in clip["reason"]
        spec = {"spaces": {"photo": {"dim": 512, "encoder": "clip", "source": "img", "modality": "image"},
                           "v": {"dim": 4, "index": {"type": "FLAT"}}}}
        assert c.put("/v1/collections/mixed", json=spec).status_code == 200
        r = c.post("/v1/collections/mixed/query", json={"prefetch": [{"space": "photo", "text": "a cat"}]})
        assert r.status_code == 503 and "'clip'" in r.json()["message"]
        assert c.post("/v1/collections/mixed/points", json={"points": [{"id": "m1", "vectors": {"v": [1, 0, 0, 0]}}]}
                      ).status_code == 200
        r = c.post("/v1/collections/mixed/query", json={"prefetch": [{"space": "v", "vector": [1, 0, 0, 0]}]})
        assert r.status_code == 200 and r.json()["hits"][0]["id"] == "m1"
    finally:
        left = inst.down()
    assert left == [], f"processes left after prism down: {left}"
    assert not _port_open(inst.port), "the HTTP port still answers after prism down"
    # An orderly stop: prism's own handler took the SIGTERM (not Ray's, which exits mid-wait and orphans agents)
    log = (inst.data_dir / "prism.log").read_text(errors="replace")
    assert "shutting down ..." in log and "SIGTERM received" not in log, log[-2000:]

    inst.up()
    try:
        c = httpx.Client(base_url=inst.url, timeout=120)
        assert c.get("/v1/collections/keep").json()["counts"] == {"v": 20}
        hit = c.post("/v1/collections/keep/query",
                     json={"prefetch": [{"space": "v", "vector": [1.0, 7.0, 0.0, 1.0]}], "limit": 1}).json()["hits"][0]
        assert hit["id"] == "k7" and hit["payload"] == {"i": 7, "tag": "odd"}
        # The Elasticsearch store persisted too: a filter only ES can decide (forced by its shape: should x2).
        flt = {"bool": {"should": [{"term": {"tag": "even"}}, {"range": {"i": {"gte": 10}}}], "minimum_should_match": 2}}
        answer = c.post("/v1/collections/keep/query",
                        json={"prefetch": [{"space": "v", "vector": [1.0, 7.0, 0.0, 1.0]}], "limit": 20, "filter": flt}).json()
        assert answer["filter_plans"] == ["prefilter"]
        assert sorted(h["id"] for h in answer["hits"]) == sorted(f"k{i}" for i in range(10, 20, 2))
    finally:
        left = inst.down()
    assert left == []


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
