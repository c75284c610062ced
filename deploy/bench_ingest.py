"""Bulk ingestion (`--only ingest`): `prism ingest` on Ray Data (`direct_below=0`: the path of loads of 2,000 points
or more) against a plain encode+insert loop, text and text+image."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import QUERY_TEXTS


def run(workdir: Path, n: int = 3000) -> dict:
    """`prism ingest` on Ray Data vs a plain single-process encode+insert loop, into the same running prism."""
    import httpx

    from cluster.cli import bootstrap
    from cluster.config import ClusterConfig
    from cluster.cli.ingest import run_ingest
    from cluster.services import free_port, side_port
    from router.encoding.embed import load_encoder

    import ray

    print(f"[ingest] {n} points, MiniLM", flush=True)
    port = free_port()
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, grpc_port=side_port(),
                        elasticsearch={"mode": "off"})
    from deploy.tinyclip import build_tiny_clip

    build_tiny_clip(workdir / "prism" / "models" / "clip")  # found by prism up in DATA_DIR/models
    words = [w for q in QUERY_TEXTS for w in q.split()]
    src = workdir / "points.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"id": f"i{i}", "title": " ".join(words[(i * k) % len(words)] for k in range(1, 9))})
                           + "\n" for i in range(n)))
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "title", "index": {"type": "HNSW"}}},
            "shards": 2}
    try:
        bootstrap.start_detached(cfg)
        url = f"http://127.0.0.1:{port}"
        for name in ("pipeline", "baseline"):
            httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
        rep = run_ingest(src, "pipeline", url, ledger_path=workdir / "ledger", batch_size=64, write_batch=256,
                         direct_below=0)  # the Ray Data pipeline is what is measured
        ray.shutdown()
        enc = load_encoder("minilm")
        t0 = time.perf_counter()
        lines = src.read_text().splitlines()
        with httpx.Client(timeout=300) as c:
            for i in range(0, n, 256):
                objs = [json.loads(x) for x in lines[i : i + 256]]
                vecs = enc.encode_documents([o["title"] for o in objs])
                pts = [{"id": o["id"], "payload": o, "vectors": {"text": v.vector}} for o, v in zip(objs, vecs)]
                c.post(f"{url}/v1/collections/baseline/points", json={"points": pts}).raise_for_status()
        baseline_s = time.perf_counter() - t0
        texts = [json.loads(x)["title"] for x in lines[:1024]]
        t0 = time.perf_counter()
        enc.encode_documents(texts)
        raw = len(texts) / (time.perf_counter() - t0)
        multimodal = _ingest_text_image(url, workdir, min(n, 1000))
    finally:
        bootstrap.stop_instance(cfg.data_path)
    result = {"points": n, "pipeline_points_per_s": round(rep.points_per_s, 1),
              "baseline_points_per_s": round(n / baseline_s, 1), "raw_encode_per_s": round(raw, 1),
              "ratio": round(rep.points_per_s / (n / baseline_s), 3),
              "ratio_vs_raw_encode": round(rep.points_per_s / raw, 3), "failures": len(rep.failures),
              "text_image": multimodal}
    print(f"[ingest] {json.dumps(result)}", flush=True)
    return result


def _ingest_text_image(url: str, workdir: Path, n: int) -> dict:
    """Text+image points (tiny CLIP in DATA_DIR/models): pipeline vs a plain encode+insert loop, same run."""
    import base64
    import io

    import httpx
    import ray
    import skimage.data
    from PIL import Image

    from cluster.cli.ingest import run_ingest
    from router.encoding.embed import load_encoder

    health = httpx.get(f"{url}/health", timeout=30).json()["encoders"]["clip"]
    dim = health["dim"]
    photos = []
    for name in ("coffee", "chelsea", "astronaut", "rocket", "horse", "camera", "coins"):
        arr = getattr(skimage.data, name)()
        arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr[..., :3]
        buf = io.BytesIO()
        Image.fromarray(arr.astype("uint8")).resize((128, 96)).save(buf, format="JPEG")
        photos.append(base64.b64encode(buf.getvalue()).decode())
    spec = {"spaces": {"image": {"dim": dim, "encoder": "clip", "source": "image", "modality": "image"},
                       "caption": {"dim": dim, "encoder": "clip", "source": "caption"}}, "shards": 2}
    for name in ("mm_pipeline", "mm_baseline"):
        httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
    src = workdir / "mm.jsonl"
    src.write_text("".join(json.dumps({"id": f"m{i}", "caption": f"photo number {i} of {i % 7}", "image": photos[i % 7]})
                           + "\n" for i in range(n)))
    rep = run_ingest(src, "mm_pipeline", url, ledger_path=workdir / "mm-ledger", batch_size=32, write_batch=128,
                     models_dir=str(workdir / "prism" / "models"), direct_below=0)
    ray.shutdown()
    enc = load_encoder("clip", str(workdir / "prism" / "models"))
    from router.encoding.images import decode_base64, decode_image

    t0 = time.perf_counter()
    objs = [json.loads(x) for x in src.read_text().splitlines()]
    with httpx.Client(timeout=300) as c:
        for i in range(0, n, 128):
            chunk = objs[i : i + 128]
            imgs = enc.encode_images([decode_image(decode_base64(o["image"], "image"), "image") for o in chunk])
            caps = enc.encode_documents([o["caption"] for o in chunk])
            pts = [{"id": o["id"], "payload": {"caption": o["caption"]},
                    "vectors": {"image": a.vector, "caption": b.vector}} for o, a, b in zip(chunk, imgs, caps)]
            c.post(f"{url}/v1/collections/mm_baseline/points", json={"points": pts}).raise_for_status()
    base = n / (time.perf_counter() - t0)
    return {"points": n, "encoder": f"tiny random CLIP ({dim}-d; code path of the real one)",
            "pipeline_points_per_s": round(rep.points_per_s, 1), "baseline_points_per_s": round(base, 1),
            "ratio": round(rep.points_per_s / base, 3), "failures": len(rep.failures)}
