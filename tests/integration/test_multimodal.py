"""CLIP's real code path with a tiny random CLIP: both towers, real photos (scikit-image), image and image+text
queries, bad images failing alone, missing weights reported. Real-weight checks run only when weights exist."""
from __future__ import annotations

import asyncio
import base64
import io
import itertools
import struct
import zlib

import numpy as np
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MAX_UPLOAD_BYTES, MilvusConfig
from cluster.errors import InvalidRequest, ModelUnavailable, PayloadTooLarge
from shards.local import local_shards, replica_specs
from router.collection.coordinator import Coordinator
from router.encoding.embed import clip_path, load_encoder
from router.schema.points import Point
from router.schema.query import QueryRequest
from deploy.tinyclip import DIM, build_tiny_clip

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "horse", "camera", "coins")
_n = itertools.count()


def png(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def photo(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3].astype("uint8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_clip(root / "clip")
    return str(root)


@pytest.fixture(scope="module")
def clip(models_dir):
    return load_encoder("clip", models_dir)


def test_tiny_clip_through_the_real_loader(clip, models_dir):
    assert clip.dim == DIM and clip.modalities == ("text", "image") and clip.max_tokens == 77
    texts = ["a cup of coffee", "a cat on a sofa"]
    batch = clip.encode(texts)
    single = [clip.encode([t])[0] for t in texts]
    for b, s in zip(batch, single):
        assert np.allclose(b.vector, s.vector, atol=1e-5)
        assert abs(np.linalg.norm(b.vector) - 1) < 1e-5
    again = load_encoder("clip", models_dir).encode(texts)  # deterministic across loads
    assert np.allclose([e.vector for e in again], [e.vector for e in batch], atol=1e-6)
    assert clip.encode(["word " * 300])[0].truncated is True


def test_real_photos_preprocess_and_embed(clip):
    from router.encoding.images import decode_image

    imgs = [decode_image(png(photo(n)), n) for n in PHOTOS]
    assert all(i.mode == "RGB" for i in imgs)
    batch = clip.encode_images(imgs)
    single = clip.encode_images(imgs[:1])
    assert np.allclose(batch[0].vector, single[0].vector, atol=1e-5)
    vecs = np.array([e.vector for e in batch])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in vecs}) == len(PHOTOS)  # different photos, different vectors


def test_long_documents_are_averaged_over_overlapping_windows(clip):
    short = "a red running shoe"
    long = " ".join(["a red running shoe with a white sole"] * 40)
    d = clip.encode_documents([short, long])
    assert np.allclose(d[0].vector, clip.encode([short])[0].vector, atol=1e-5)  # fits: same as a query
    assert abs(np.linalg.norm(d[1].vector) - 1) < 1e-5 and not d[1].truncated
    assert not np.allclose(d[1].vector, clip.encode([long])[0].vector, atol=1e-3)  # not just the first window


def test_missing_weights_are_reported_with_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_MODELS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable) as exc:
        load_encoder("clip", str(tmp_path / "empty"))
    assert "'clip'" in exc.value.message and "prism models install" in exc.value.message


@pytest.fixture(scope="module")
def photos_coord(clip, tmp_path_factory):
    cfg = CollectionConfig(name=f"photos{next(_n)}", shards=2, metadata={"name": "keyword"}, spaces={
        "image": {"dim": DIM, "encoder": "clip", "source": "image", "modality": "image", "index": {"type": "FLAT"}},
        "caption": {"dim": DIM, "encoder": "clip", "source": "caption", "index": {"type": "FLAT"}},
    })
    clients = local_shards(cfg, replica_specs(cfg, MilvusConfig(mode="lite"), tmp_path_factory.mktemp("photos"), None))

    async def encode(name, texts, document=False):
        out = clip.encode_documents(texts) if document else clip.encode(texts)
        return [tuple(e) for e in out]

    async def encode_images(name, images):
        return [tuple(e) for e in clip.encode_images(images)]

    coord = Coordinator.from_clients(cfg, clients, encode=encode, encode_images=encode_images)
    points = [Point(id=n, payload={"name": n, "caption": f"a photo of a {n}", "image": b64(png(photo(n)))})
              for n in PHOTOS]
    res = asyncio.run(coord.upsert(points))
    assert res.upserted == len(PHOTOS) and res.failed == []
    return coord


def test_image_query_finds_the_same_photo_first(photos_coord):
    for name in ("coffee", "astronaut", "horse"):
        r = asyncio.run(photos_coord.query(QueryRequest(
            prefetch=[{"space": "image", "image": b64(png(photo(name)))}], fusion={"method": "none"}, limit=3)))
        assert r.hits[0].id == name and r.hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert r.hits[0].payload["image"].startswith("<inline image")  # inline bytes are not stored as payload


def test_image_plus_text_and_image_to_text(photos_coord):
    r = asyncio.run(photos_coord.query(QueryRequest(prefetch=[
        {"space": "image", "image": b64(png(photo("rocket")))}, {"space": "caption", "text": "a photo of a rocket"}],
        limit=3)))
    assert r.hits[0].id == "rocket"  # first in both lists: first after RRF
    cross = asyncio.run(photos_coord.query(QueryRequest(
        prefetch=[{"space": "caption", "image": b64(png(photo("coins")))}], fusion={"method": "none"}, limit=7)))
    assert len(cross.hits) == 7  # an image query against the text-tower space of the same CLIP


def bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny (invalid) body: decompression-bomb shaped."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo("camera")).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("bad, reason", [
    (b64(jpeg()[:600]), "broken image"),
    ("", None),
    (b64(b"just some text, not an image"), "not an image"),
    (b64(bomb_png()), "decompression bomb"),
    ("%%%not-base64%%%", "not valid base64"),
])
def test_a_bad_image_fails_its_point_only(photos_coord, bad, reason):
    before = sum(row[0]["image"] for row in asyncio.run(photos_coord.counts()))
    pid = f"bad{next(_n)}"
    res = asyncio.run(photos_coord.upsert([
        Point(id=pid, payload={"caption": "x", "image": bad}),
        Point(id=f"ok{next(_n)}", payload={"caption": "fine", "image": b64(png(photo("horse")))})]))
    if reason is None:  # an empty image field simply has no image: the point lands with its caption only
        assert res.upserted == 2 and res.failed == []
        return
    assert res.upserted == 1 and [f.id for f in res.failed] == [pid] and reason in res.failed[0].reason
    after = sum(row[0]["image"] for row in asyncio.run(photos_coord.counts()))
    assert after == before + 1
    held = asyncio.run(photos_coord.shards[photos_coord.shard_of(pid)].clients[0].get([pid]))
    assert pid not in held  # nothing partial: not even its caption vector


def test_bad_query_images_are_4xx(photos_coord):
    for bad, err in ((b64(b"nope"), InvalidRequest), ("***", InvalidRequest), (b64(bomb_png()), InvalidRequest)):
        with pytest.raises(err) as exc:
            asyncio.run(photos_coord.query(QueryRequest(prefetch=[{"space": "image", "image": bad}])))
        assert exc.value.status == 422 and exc.value.field == "prefetch[0].image"
    photos_coord.vectors.images = photos_coord.vectors.images.model_copy(update={"max_bytes": 2048})
    try:
        with pytest.raises(PayloadTooLarge):
            asyncio.run(photos_coord.query(QueryRequest(prefetch=[{"space": "image", "image": b64(png(photo("coffee")))}])))
    finally:
        photos_coord.vectors.images = photos_coord.vectors.images.model_copy(update={"max_bytes": MAX_UPLOAD_BYTES})


def _real_clip() -> str | None:
    try:
        return clip_path()
    except ModelUnavailable:
        return None


@pytest.mark.skipif(_real_clip() is None, reason="no real CLIP ViT-B/32 weights on this machine (PRISM_MODELS_DIR or "
                                                 "the Hugging Face cache); none can be downloaded here")
def test_real_clip_finds_coffee_and_the_cat():
    enc = load_encoder("clip")
    from router.encoding.images import decode_image

    imgs = np.array([e.vector for e in enc.encode_images([decode_image(png(photo(n)), n) for n in PHOTOS])])
    for text, want in (("a cup of coffee", "coffee"), ("a cat", "chelsea")):
        q = np.array(enc.encode([text])[0].vector)
        assert PHOTOS[int(np.argmax(imgs @ q))] == want


def test_partial_vector_update_reembeds_only_the_changed_space(photos_coord):
    from router.schema.points import VectorUpdate

    def caption_vec(pid):
        r = asyncio.run(photos_coord.query(QueryRequest(prefetch=[{"space": "caption", "text": "x"}],
                                                        fusion={"method": "none"}, limit=20, with_vectors=["caption"])))
        return next(h.vectors["caption"] for h in r.hits if h.id == pid)

    before = caption_vec("camera")
    res = asyncio.run(photos_coord.update_vectors([
        VectorUpdate(id="camera", sources={"image": b64(png(photo("rocket")))}), VectorUpdate(id="ghost", vectors={"image": [0.0] * DIM})]))
    assert res.upserted == 1 and [f.id for f in res.failed] == ["ghost"]
    r = asyncio.run(photos_coord.query(QueryRequest(prefetch=[{"space": "image", "image": b64(png(photo("rocket")))}],
                                                    fusion={"method": "none"}, limit=2)))
    assert {h.id for h in r.hits} == {"rocket", "camera"}  # the re-shot photo now matches the rocket
    assert np.allclose(caption_vec("camera"), before, atol=1e-6)  # the caption vector was kept, not re-embedded


def test_jpeg_base64_is_not_mistaken_for_a_path(photos_coord, tmp_path):
    from router.encoding.images import load_reference

    data = jpeg()
    ref = b64(data)
    assert ref.startswith("/9j/")  # every JPEG's base64 does: it looks like an absolute path
    assert load_reference(ref, "f", allow_files=True) == data
    f = tmp_path / "x.jpg"
    f.write_bytes(data)
    assert load_reference(str(f), "f", allow_files=True) == data == load_reference(f"file://{f}", "f", allow_files=True)
    res = asyncio.run(photos_coord.upsert([Point(id="jpeg1", payload={"caption": "a camera", "image": ref})]))
    assert res.upserted == 1 and res.failed == []
    held = asyncio.run(photos_coord.shards[photos_coord.shard_of("jpeg1")].clients[0].get(["jpeg1"]))
    assert held["jpeg1"].payload["image"].startswith("<inline image")  # not the base64 itself


def test_a_request_of_many_images_over_the_pixel_budget_is_a_413_naming_it_and_writes_nothing(photos_coord):
    """Each photo is well within the per-image limit, but together they exceed images.max_request_pixels: the
    whole upsert (or query) is refused before anything is decoded past the budget, and no store changes."""
    from cluster.errors import ImageBudgetExceeded

    pixels = {n: photo(n).shape[0] * photo(n).shape[1] for n in PHOTOS}
    names = ["coffee", "astronaut", "rocket", "horse"]
    budget = sum(pixels[n] for n in names[:2]) + 1  # room for two of them
    ids = [f"budget{next(_n)}" for _ in names]
    before = asyncio.run(photos_coord.counts())
    limits = photos_coord.vectors.images
    photos_coord.vectors.images = limits.model_copy(update={"max_request_pixels": budget})
    try:
        with pytest.raises(ImageBudgetExceeded) as exc:
            asyncio.run(photos_coord.upsert([Point(id=i, payload={"caption": n, "image": b64(png(photo(n)))})
                                             for i, n in zip(ids, names)]))
        assert exc.value.status == 413 and exc.value.field == "images.max_request_pixels"
        assert str(budget) in exc.value.message
        with pytest.raises(ImageBudgetExceeded):
            asyncio.run(photos_coord.query(QueryRequest(
                prefetch=[{"space": "image", "image": b64(png(photo(n)))} for n in names], limit=3)))
        # Within the budget the same request shape works.
        ok = asyncio.run(photos_coord.query(QueryRequest(
            prefetch=[{"space": "image", "image": b64(png(photo(n)))} for n in names[:2]], limit=3)))
        assert ok.hits
    finally:
        photos_coord.vectors.images = limits
    assert asyncio.run(photos_coord.counts()) == before
    for sh in photos_coord.shards:
        for client in sh.clients:
            assert not set(asyncio.run(client.get(ids)))


def test_vectors_stay_float32_from_the_encoder_into_milvus(photos_coord):
    """No float lists on the write path: the encoders' float32 arrays reach the shard as they are, and Milvus gives
    back exactly those float32 values."""
    point = Point(id=f"f32-{next(_n)}", payload={"caption": "a float32 caption", "image": b64(png(photo("coins")))})
    rows, _, failed = asyncio.run(photos_coord.vectors.prepare_points([point]))
    assert failed == [] and set(rows[0].vectors) == {"caption", "image"}
    for v in rows[0].vectors.values():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (DIM,)
    assert asyncio.run(photos_coord.upsert([point])).upserted == 1
    held = asyncio.run(photos_coord.shards[photos_coord.shard_of(point.id)].clients[0].get(
        [point.id], with_vectors=["caption", "image"]))
    for space, v in rows[0].vectors.items():
        assert np.array_equal(np.asarray(held[point.id].vectors[space], dtype=np.float32), v)
