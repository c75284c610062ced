"""How long `prism up --detach` and `prism down` take (`python -m deploy.bench --only startup`).

What most e2e tests and `make demo` pay: a real `prism up --detach` (milvus-lite, the bundled Elasticsearch API
server, the tiny CLIP of deploy/tinyclip.py in DATA_DIR/models, so both encoders load) on a free port, then
`prism down`. The first start makes a 2-shard collection with 20 points (not counted); each counted cycle restarts
over it, so the collection is reopened (its shard and sequencer actors started again) as after any restart.
Each cycle's phases come from the `started in` line `prism up` writes to its log (cluster/cli/bootstrap.py):
the bootstrap's own phases and, inside Serve, what the ingress replica spent and each encoder's load time.

The machine is shared and noisy: medians of `cycles` runs, and runs under other labels (the code before a
change, measured in the same session) are kept beside this one's for the ratio. Writes docs/bench/startup.json.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deploy.benchlib import keep_other_runs

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"spaces": {"v": {"dim": 4, "index": {"type": "FLAT"}}}, "shards": 2,
        "metadata": {"i": "integer", "tag": "keyword"}}


def _cli(*args: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    from cluster.ports import ENV_NAMES

    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}  # each instance claims its own block
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=timeout, env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"prism {args[0]} failed ({r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.monotonic() - t0, r


def started_line(log: Path, what: str = "started") -> dict:
    """The last `started in` line of prism.log, parsed: total, bootstrap phases and the ingress's own timings."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(f"{what} in ")]
    if not lines:
        return {}
    head, _, inside = lines[-1].partition("; inside Serve: ")
    total, _, parts = head.removeprefix(f"{what} in ").partition(": ")
    phases = {p.rsplit(" ", 2)[0]: float(p.rsplit(" ", 2)[1]) for p in parts.split(", ") if p}
    out = {"total_s": float(total.removesuffix(" s")), "phases_s": phases}
    return {**out, "inside_serve": json.loads(inside)} if inside else out


def _median(rows: list[dict], *path: str) -> float | None:
    values = []
    for r in rows:
        v: object = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            values.append(float(v))
    return round(statistics.median(values), 2) if values else None


def run(workdir: Path, cycles: int = 3, label: str = "current") -> dict:
    import httpx

    from cluster.services import free_port, side_port
    from deploy.tinyclip import build_tiny_clip

    data = Path(workdir) / "data"
    build_tiny_clip(data / "models" / "clip")
    port = free_port()
    up = ("up", "--detach", "--port", str(port), "--grpc-port", str(side_port()), "--data-dir", str(data),
          "--milvus", "lite")
    first_up, _ = _cli(*up)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            assert c.put("/v1/collections/keep", json=SPEC).status_code == 200
            pts = [{"id": f"k{i}", "payload": {"i": i, "tag": "even" if i % 2 == 0 else "odd"},
                    "vectors": {"v": [1.0, i, 0.0, 1.0]}} for i in range(20)]
            assert c.post("/v1/collections/keep/points", json={"points": pts}).status_code == 200
    finally:
        first_down, _ = _cli("down", "--data-dir", str(data))
    rows = []
    for _ in range(cycles):
        try:
            up_s, _ = _cli(*up)
        except RuntimeError as exc:  # the temp dir goes with the run: keep why prism up failed
            log = (data / "prism.log").read_text(errors="replace").splitlines()
            raise RuntimeError(f"{exc}\n--- prism.log, lines saying why ---\n" + "\n".join(
                ln for ln in log[-400:] if "failed" in ln or "Error" in ln)) from None
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                reopened = c.get("/v1/collections/keep").json()["counts"]  # the reopened collection answers
        finally:
            down_s, _ = _cli("down", "--data-dir", str(data))
        rows.append({"up_s": round(up_s, 2), "down_s": round(down_s, 2), "counts": reopened,
                     **started_line(data / "prism.log")})
    phases = sorted({k for r in rows for k in r.get("phases_s", {})})
    inside = sorted({k for r in rows for k, v in r.get("inside_serve", {}).items() if not isinstance(v, dict)})
    encoders = sorted({k for r in rows for k in r.get("inside_serve", {}).get("encoder_load_s", {})})
    summary = {
        "label": label, "cycles": rows, "first_up_s": round(first_up, 2), "first_down_s": round(first_down, 2),
        "median": {"up_s": _median(rows, "up_s"), "down_s": _median(rows, "down_s"),
                   "total_s": _median(rows, "total_s"),
                   **{f"{p}_s": _median(rows, "phases_s", p) for p in phases},
                   **{f"serve.{k}": _median(rows, "inside_serve", k) for k in inside},
                   **{f"serve.encoder_load_s.{e}": _median(rows, "inside_serve", "encoder_load_s", e)
                      for e in encoders}},
    }
    runs = keep_other_runs("startup", [summary], key=lambda r: r.get("label"))
    out: dict = {"runs": runs}
    base = next((r for r in runs if r.get("label") == "before"), None)
    now = next((r for r in runs if r.get("label") == "after"), None)
    if base and now:
        out["ratio_after_over_before"] = {
            k: round(now["median"][k] / base["median"][k], 2) for k in ("up_s", "down_s")
            if now["median"].get(k) and base["median"].get(k)}
    return out


COLUMNS = [("up_s", "prism up --detach s"), ("down_s", "prism down s"), ("ray_s", "Ray s"), ("serve_s", "Serve s"),
           ("serve.encoders_wait_s", "ingress waits for encoders s"), ("serve.catalog_s", "catalog reopen s"),
           ("serve.encoder_load_s.minilm", "MiniLM load s"), ("serve.encoder_load_s.clip", "CLIP load s")]


def table(payload: dict) -> str:
    """docs/benchmarks.md's table: one row per label (medians), then the ratio of the after/before medians."""
    out = ["| code | cycles | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for r in payload["runs"]:
        out.append(f"| {r['label']} | {len(r['cycles'])} | "
                   + " | ".join(str(r["median"].get(k, "-")) for k, _ in COLUMNS) + " |")
    ratio = payload.get("ratio_after_over_before")
    if ratio:
        out += ["", "after / before (medians): " + ", ".join(f"{k} {v}" for k, v in ratio.items()) + "."]
    return "\n".join(out)


if __name__ == "__main__":  # python -m deploy.bench_startup [label] [cycles]: this section alone
    import tempfile

    from deploy.benchlib import machine, write_json

    with tempfile.TemporaryDirectory(prefix="prism-bench-startup-") as tmp:
        result = run(Path(tmp), cycles=int(sys.argv[2]) if len(sys.argv) > 2 else 3,
                     label=sys.argv[1] if len(sys.argv) > 1 else "current")
    write_json("startup", {"machine": machine(), **result})
    print(json.dumps(result["runs"][0]["median"], indent=2))
