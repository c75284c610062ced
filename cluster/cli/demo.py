"""`make demo`: start prism detached, ingest the sample catalog, run example queries, shut down. Non-zero on failure."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

from cluster.services import free_port, side_port

ROOT = Path(__file__).resolve().parents[2]  # the checkout: cluster/cli/demo.py -> .
CONFIG = ROOT / "deploy" / "demo.yaml"
CATALOG = ROOT / "deploy" / "data" / "catalog.jsonl"
console = Console(markup=False)  # text it did not write is printed as it is (see cluster.cli.common)

QUERIES = [
    ("shoes for running on muddy trails", ["text"], "none", None),
    ("something bright yellow and shiny", ["visual"], "none", None),
    ("warm clothes for a cold hike", ["text", "visual"], "rrf", None),
    ("a gift for someone who loves the outdoors", ["text", "visual"], "rrf",
     {"bool": {"filter": [{"range": {"price": {"lt": 50}}}, {"term": {"in_stock": True}}],
               "must_not": [{"term": {"category": "apparel"}}]}}),
]


def prism(*args: str) -> None:
    cmd = [sys.executable, "-m", "cluster.cli", *args]
    console.print(f"$ prism {' '.join(args)}", style="dim")
    subprocess.run(cmd, check=True)


PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "horse", "camera", "coins")


def image_demo(base: str) -> None:
    """Text -> image over the scikit-image sample photos, when real CLIP weights are installed."""
    clip = httpx.get(f"{base}/health", timeout=30).json()["encoders"].get("clip", {})
    if not clip.get("available"):
        console.print(Text.assemble(("image space off:", "yellow"), f" {clip.get('reason', 'no CLIP encoder')}; the "
                                    "text spaces above are what runs without CLIP weights"))
        return
    import base64
    import io

    import numpy as np
    import skimage.data
    from PIL import Image

    def b64(name: str) -> str:
        arr = getattr(skimage.data, name)()
        arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr[..., :3]
        buf = io.BytesIO()
        Image.fromarray(arr.astype("uint8")).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    spec = {"spaces": {"image": {"dim": clip["dim"], "encoder": "clip", "source": "image", "modality": "image"}}}
    httpx.put(f"{base}/v1/collections/photos", json=spec, timeout=120).raise_for_status()
    pts = [{"id": n, "payload": {"name": n, "image": b64(n)}} for n in PHOTOS]
    httpx.post(f"{base}/v1/collections/photos/points", json={"points": pts}, timeout=300).raise_for_status()
    from cluster.cli.collection import print_hits

    for text in ("a cup of coffee", "a cat"):
        r = httpx.post(f"{base}/v1/collections/photos/query", timeout=60,
                       json={"prefetch": [{"space": "image", "text": text}], "fusion": {"method": "none"}, "limit": 3})
        r.raise_for_status()
        print_hits(r.json(), f"{text!r} -> scikit-image photos (CLIP)")


def hybrid_demo(base: str, print_hits) -> None:
    """Keywords (BM25) + text + visual fused with RRF, then an in-stock boost and MMR; then a grouped answer."""
    text = "waterproof jacket for hiking in the rain"
    prefetch = [{"space": s, "text": text, "limit": 30} for s in ("keywords", "text", "visual")]
    stages = [{"formula": {"boost": [{"field": "in_stock", "equals": True, "add": 0.01}]}},
              {"mmr": {"space": "text", "lambda": 0.7}}]
    r = httpx.post(f"{base}/v1/collections/products/query", timeout=60,
                   json={"prefetch": prefetch, "fusion": {"method": "rrf"}, "limit": 5, "stages": stages})
    r.raise_for_status()
    print(f"hybrid query: {text!r}", flush=True)
    print_hits(r.json(), "hybrid: keywords+text+visual, rrf, boost, mmr")
    r = httpx.post(f"{base}/v1/collections/products/query", timeout=60, json={
        "prefetch": prefetch, "fusion": {"method": "rrf"},
        "stages": [{"group_by": {"field": "category", "size": 2, "groups": 3}}]})
    r.raise_for_status()
    for group in r.json()["groups"]:
        print_hits({**r.json(), "hits": group["hits"]}, f"group: {group['value']}")


def main() -> int:
    data_dir = tempfile.mkdtemp(prefix="prism-demo-")
    port = free_port()
    started = False
    try:
        prism("up", "--detach", "--port", str(port), "--grpc-port", str(side_port()), "--data-dir", data_dir,
              "--config", str(CONFIG))
        started = True
        prism("ingest", str(CATALOG), "--collection", "products", "--data-dir", data_dir)
        base = f"http://127.0.0.1:{port}"
        from cluster.cli.collection import print_hits

        for text, spaces, fusion, flt in QUERIES:
            body = {"prefetch": [{"space": s, "text": text, "limit": 20} for s in spaces],
                    "fusion": {"method": fusion}, "limit": 5, **({"filter": flt} if flt else {})}
            r = httpx.post(f"{base}/v1/collections/products/query", json=body, timeout=60)
            r.raise_for_status()
            title = f"{text!r} in {'+'.join(spaces)} ({fusion})" + (f" filter {json.dumps(flt)}" if flt else "")
            print_hits(r.json(), title)
        hybrid_demo(base, print_hits)
        image_demo(base)
        prism("status", "--data-dir", data_dir)
        return 0
    except (subprocess.CalledProcessError, httpx.HTTPError) as exc:
        console.print(Text.assemble(("demo failed:", "red"), f" {exc}"))
        return 1
    finally:
        if started:
            prism("down", "--data-dir", data_dir)


if __name__ == "__main__":
    sys.exit(main())
