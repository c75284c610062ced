"""Images over HTTP: upsert photos (base64), query by upload (multipart), image + text fused."""
from __future__ import annotations

import json

from tests.e2e.conftest import png  # noqa: F401


def test_query_by_upload(photos):
    r = photos.post("/v1/collections/photos/query/image", files={"image": ("q.png", png("astronaut"), "image/png")},
                    data={"params": json.dumps({"limit": 3, "image_spaces": ["image"]})})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == "astronaut"


def test_upload_plus_text_fused_and_bad_uploads(photos):
    r = photos.post("/v1/collections/photos/query/image", files={"image": ("q.png", png("horse"), "image/png")},
                    data={"text": "a photo of a horse", "params": json.dumps({"limit": 3})})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "horse"
    r = photos.post("/v1/collections/photos/query/image", files={"image": ("q.png", b"\x89PNG broken", "image/png")})
    assert r.status_code == 422 and r.json()["field"] == "prefetch[0].image"
    r = photos.post("/v1/collections/photos/query/image", files={"image": ("q.png", png("horse"), "image/png")},
                    data={"params": "{not json"})
    assert r.status_code == 422 and r.json()["field"] == "params"
    r = photos.post("/v1/collections/products/query/image", files={"image": ("q.png", png("horse"), "image/png")})
    assert r.status_code == 422 and "no CLIP space" in r.json()["message"]
    assert photos.get("/health").json()["status"] == "ok"
