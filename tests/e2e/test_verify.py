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
