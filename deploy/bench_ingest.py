"""Bulk ingestion (`--only ingest`): `prism ingest` on Ray Data (`direct_below=0`: the path of loads of 2,000 points
or more) against a plain encode+insert loop, text and text+image.

Each pipeline run says what bounds it: `startup_s` (from the call to the first acknowledged write batch: joining the
instance's Ray cluster, planning, the encoder actor's process and model, the first batches) and
`steady_points_per_s` (the points after the first write batch over the time they took). The plain loop's encoder
is loaded before its clock starts; the pipeline's model load is in its start-up. Text is measured at two sizes, so
the larger says what the pipeline does where start-up is not most of the wall time."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from deploy.benchlib import QUERY_TEXTS


def timed_ingest(src: Path, collection: str, url: str, **kw) -> dict:
    """`run_ingest` on Ray Data with its start-up and steady state read from the progress callback."""
    import ray

    from cluster.cli.ingest import run_ingest

    stamps: list[tuple[float, int]] = []
    done = [0]
    t0 = time.perf_counter()

    def progress(n: int) -> None:
        done[0] += n
        stamps.append((time.perf_counter() - t0, done[0]))

    rep = run_ingest(src, collection, url, progress=progress, direct_below=0, **kw)
    ray.shutdown()  # a job of the instance's cluster: this disconnects, the next run joins afresh
    (first_t, first_n), (last_t, last_n) = stamps[0], stamps[-1]
    steady = (last_n - first_n) / (last_t - first_t) if last_t > first_t else 0.0
    return {"points_per_s": rep.points_per_s, "startup_s": round(first_t, 1), "steady_points_per_s": round(steady, 1),
            "failures": len(rep.failures)}


def plain_text_loop(url: str, collection: str, lines: list[str], enc) -> float:
    """Points/s of a single-process encode+insert loop (the encoder already loaded)."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(timeout=300) as c:
        for i in range(0, len(lines), 256):
            objs = [json.loads(x) for x in lines[i : i + 256]]
            vecs = enc.encode_documents([o["title"] for o in objs])
            pts = [{"id": o["id"], "payload": o, "vectors": {"text": v.vector.tolist()}} for o, v in zip(objs, vecs)]
            c.post(f"{url}/v1/collections/{collection}/points", json={"points": pts}).raise_for_status()
    return len(lines) / (time.perf_counter() - t0)


def text_run(url: str, workdir: Path, n: int, ray_address: str | None, enc) -> dict:
    """Pipeline then plain loop on `n` text points, each into a collection of its own."""
    import httpx

    words = [w for q in QUERY_TEXTS for w in q.split()]
    src = workdir / f"points-{n}.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"id": f"i{i}", "title": " ".join(words[(i * k) % len(words)] for k in range(1, 9))})
                           + "\n" for i in range(n)))
    spec = {"spaces": {"text": {"dim": 384, "encoder": "minilm", "source": "title", "index": {"type": "HNSW"}}},
            "shards": 2}
    for name in (f"pipeline{n}", f"baseline{n}"):
        httpx.put(f"{url}/v1/collections/{name}", json=spec, timeout=120).raise_for_status()
    pipe = timed_ingest(src, f"pipeline{n}", url, ledger_path=workdir / f"ledger-{n}", batch_size=64,
                        write_batch=256, ray_address=ray_address)
    base = plain_text_loop(url, f"baseline{n}", src.read_text().splitlines(), enc)
    return {"points": n, "pipeline_points_per_s": round(pipe["points_per_s"], 1),
            "baseline_points_per_s": round(base, 1), "ratio": round(pipe["points_per_s"] / base, 3),
            "startup_s": pipe["startup_s"], "steady_points_per_s": pipe["steady_points_per_s"],
            "steady_ratio": round(pipe["steady_points_per_s"] / base, 3), "failures": pipe["failures"]}


def catalog_command(url: str, data_dir: Path) -> dict:
    """Wall time of the command a person runs on the sample catalog (64 points: embedded by the running instance),
    from the shell: `prism ingest deploy/data/catalog.jsonl` as a process of its own, Python start-up included; its
    output must be the command's own line alone."""
    import subprocess
    import sys

    import httpx

    spaces = {s: {"dim": 384, "encoder": "minilm", "source": src, "index": {"type": "HNSW"}}
              for s, src in (("text", "description"), ("visual", "visual"))}
    httpx.put(f"{url}/v1/collections/catalog", json={"spaces": spaces, "shards": 2}, timeout=120).raise_for_status()
    src = Path(__file__).parent / "data" / "catalog.jsonl"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "ingest", str(src), "--collection", "catalog",
                        "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return {"points": len(src.read_text().splitlines()), "wall_s": round(wall, 2), "returncode": r.returncode,
            "console": lines[-4:]}


def run(workdir: Path, n: int = 3000, large: int = 10_000) -> dict:
    """`prism ingest` on Ray Data vs a plain single-process encode+insert loop, into the same running prism."""
    from cluster.cli import bootstrap
    from cluster.config import ClusterConfig
    from cluster.services import free_port, side_port
    from deploy.tinyclip import build_tiny_clip
    from router.encoding.embed import load_encoder

    print(f"[ingest] {n} and {large} points, MiniLM", flush=True)
    port = free_port()
    cfg = ClusterConfig(data_dir=str(workdir / "prism"), port=port, grpc_port=side_port(),
                        elasticsearch={"mode": "off"})
    build_tiny_clip(workdir / "prism" / "models" / "clip")  # found by prism up in DATA_DIR/models
    try:
        bootstrap.start_detached(cfg)
        url = f"http://127.0.0.1:{port}"
        # What `prism ingest` does on the instance's host: Ray Data joins the instance's Ray cluster.
        ray_address = bootstrap.local_ray_address(cfg.data_path, url)
        enc = load_encoder("minilm")
        small = text_run(url, workdir, n, ray_address, enc)
        texts = [json.loads(x)["title"] for x in (workdir / f"points-{n}.jsonl").read_text().splitlines()[:1024]]
        t0 = time.perf_counter()
        enc.encode_documents(texts)
        raw = len(texts) / (time.perf_counter() - t0)
        big = text_run(url, workdir, large, ray_address, enc) if large else None
        catalog = catalog_command(url, cfg.data_path)
        multimodal = _ingest_text_image(url, workdir, min(n, 1000), ray_address)
    finally:
        bootstrap.stop_instance(cfg.data_path)
    result = {**small, "raw_encode_per_s": round(raw, 1),
              "ratio_vs_raw_encode": round(small["pipeline_points_per_s"] / raw, 3),
              "joined_instance_ray": bool(ray_address), "large": big, "text_image": multimodal, "catalog": catalog}
    print(f"[ingest] {json.dumps(result)}", flush=True)
    return result


def _ingest_text_image(url: str, workdir: Path, n: int, ray_address: str | None) -> dict:
    """Text+image points (tiny CLIP in DATA_DIR/models): pipeline vs a plain encode+insert loop, same run."""
    import base64
    import io

    import httpx
    import skimage.data
    from PIL import Image

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
    pipe = timed_ingest(src, "mm_pipeline", url, ledger_path=workdir / "mm-ledger", batch_size=32, write_batch=128,
                        models_dir=str(workdir / "prism" / "models"), ray_address=ray_address)
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
                    "vectors": {"image": a.vector.tolist(), "caption": b.vector.tolist()}}
                   for o, a, b in zip(chunk, imgs, caps)]
            c.post(f"{url}/v1/collections/mm_baseline/points", json={"points": pts}).raise_for_status()
    base = n / (time.perf_counter() - t0)
    return {"points": n, "encoder": f"tiny random CLIP ({dim}-d; code path of the real one)",
            "pipeline_points_per_s": round(pipe["points_per_s"], 1), "baseline_points_per_s": round(base, 1),
            "ratio": round(pipe["points_per_s"] / base, 3), "startup_s": pipe["startup_s"],
            "steady_points_per_s": pipe["steady_points_per_s"], "steady_ratio": round(pipe["steady_points_per_s"] / base, 3),
            "failures": pipe["failures"]}


def table(ig: dict) -> str:
    """docs/benchmarks.md's ingest section (deploy.report)."""
    lines = ["| points | pipeline points/s | baseline points/s | ratio | start-up s | steady points/s |",
             "|---|---|---|---|---|---|"]
    for r in [ig] + ([ig["large"]] if ig.get("large") else []):
        lines.append(f"| {r['points']:,} | {r['pipeline_points_per_s']} | {r['baseline_points_per_s']} | "
                     f"**{r['ratio']}** | {r.get('startup_s', '-')} | {r.get('steady_points_per_s', '-')} |")
    lines += ["", f"Raw MiniLM encode {ig['raw_encode_per_s']}/s; pipeline / raw encode {ig['ratio_vs_raw_encode']}."]
    mm = ig.get("text_image")
    if mm:
        lines += ["", f"Text + image ({mm['points']:,} points, each a JPEG and a caption; {mm['encoder']}): pipeline "
                  f"{mm['pipeline_points_per_s']} points/s (start-up {mm.get('startup_s', '-')} s), plain loop "
                  f"{mm['baseline_points_per_s']} points/s, ratio **{mm['ratio']}**."]
    cat = ig.get("catalog")
    if cat:
        lines += ["", f"The sample catalog ({cat['points']} points, embedded by the running instance): `prism ingest` "
                  f"as its own process, {cat['wall_s']} s wall (exit {cat['returncode']}); its console: "
                  + " / ".join(f"`{ln}`" for ln in cat["console"]) + "."]
    return "\n".join(lines)
