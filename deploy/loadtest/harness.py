"""`prism loadtest`: run the Locust mixes headless against a prism URL, then write a report directory:
Locust's CSV stats, summary.json (p50/p95/p99 per request type, QPS, error rate, partial-answer rate), PNG plots."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


class LoadTestError(Exception):
    """Bad configuration: said plainly, no traceback."""


def preflight(url: str, collection: str, corpus: Path, headers: dict[str, str]) -> dict:
    if not corpus.is_file():
        raise LoadTestError(f"query corpus {str(corpus)!r} does not exist")
    if not [line for line in corpus.read_text().splitlines() if line.strip()]:
        raise LoadTestError(f"query corpus {str(corpus)!r} is empty: one query per line is needed")
    try:
        health = httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise LoadTestError(f"cannot reach prism at {url!r}: {exc}") from None
    if health.status_code != 200:
        raise LoadTestError(f"{url!r}/health answered HTTP {health.status_code}")
    info = httpx.get(f"{url.rstrip('/')}/v1/collections/{collection}", headers=headers, timeout=30)
    if info.status_code != 200:
        raise LoadTestError(f"collection {collection!r} at {url!r}: HTTP {info.status_code} {info.text[:200]}")
    return info.json()


def run_loadtest(url: str, collection: str, *, users: int = 8, spawn_rate: float = 8.0, run_time: str = "30s",
                 out_dir: str | Path = "loadtest-report", corpus: str | Path | None = None,
                 write_share: float = 0.0, filter_json: str | None = None, api_key: str | None = None,
                 api_key_header: str = "X-API-Key", protocol: str = "http", grpc_target: str | None = None) -> dict:
    if not 0 <= write_share <= 1:
        raise LoadTestError(f"write share must be between 0 and 1, got {write_share!r}")
    if users < 1:
        raise LoadTestError(f"users must be >= 1, got {users!r}")
    if protocol not in ("http", "grpc"):
        raise LoadTestError(f"protocol must be http or grpc, got {protocol!r}")
    if protocol == "grpc" and not grpc_target:
        raise LoadTestError("--protocol grpc needs the gRPC host:port (--grpc; default: the recorded instance's)")
    corpus = Path(corpus) if corpus else HERE / "queries.txt"
    headers = {api_key_header: api_key} if api_key else {}
    info = preflight(url, collection, corpus, headers)
    spaces = [n for n, s in info["config"]["spaces"].items() if s.get("encoder")]
    if not spaces:
        raise LoadTestError(f"collection {collection!r} has no space with an encoder; text queries need one")
    if filter_json is None:
        filter_json = _default_filter(info["config"].get("metadata", {}))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PRISM_LT_COLLECTION": collection, "PRISM_LT_CORPUS": str(corpus),
           "PRISM_LT_WRITE_SHARE": str(write_share), "PRISM_LT_SPACES": json.dumps(spaces),
           "PRISM_LT_FILTER": filter_json or "null", "PRISM_LT_OUT": str(out),
           "PRISM_LT_API_KEY": api_key or "", "PRISM_LT_API_KEY_HEADER": api_key_header,
           "PRISM_LT_PROTOCOL": protocol, "PRISM_LT_GRPC_TARGET": grpc_target or ""}
    started = datetime.now(timezone.utc)
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--only-summary",
         "-u", str(users), "-r", str(spawn_rate), "-t", run_time, "--host", url.rstrip("/"),
         "--csv", str(out / "locust"), "--csv-full-history", "--exit-code-on-error", "0", "--stop-timeout", "5"],
        env=env, capture_output=True, text=True)
    (out / "locust.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (out / "locust_stats.csv").exists():
        raise LoadTestError(f"locust failed (exit {proc.returncode}); see {out / 'locust.log'}")
    summary = summarise(out, url=url if protocol == "http" else f"grpc://{grpc_target}", collection=collection,
                        users=users, run_time=run_time, started=started, protocol=protocol)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(out, summary)
    return summary


def _default_filter(metadata: dict[str, str]) -> str | None:
    for field, kind in metadata.items():
        if kind in ("float", "integer"):
            return json.dumps({"range": {field: {"gte": 0}}})
        if kind == "boolean":
            return json.dumps({"term": {field: True}})
    return None


def _f(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _final_rows(out: Path) -> list[tuple[str, dict]]:
    """(name, counts and percentiles) per request type, then ("Aggregated", ...): from the counts the locustfile
    wrote once every user had stopped, else from locust_stats.csv (rewritten each second, so it can be short)."""
    final = out / "final_stats.json"
    if final.exists():
        data = json.loads(final.read_text())
        return [*data["types"].items(), ("Aggregated", data["total"])]
    with open(out / "locust_stats.csv") as f:
        return [(row["Name"], {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                               "p50_ms": _f(row["50%"]), "p95_ms": _f(row["95%"]), "p99_ms": _f(row["99%"]),
                               "qps": round(_f(row["Requests/s"]), 2)}) for row in csv.DictReader(f)]


def summarise(out: Path, **meta) -> dict:
    partials = json.loads((out / "partials.json").read_text()) if (out / "partials.json").exists() else {}
    rows = _final_rows(out)
    per_type = {}
    total = None
    for name, entry in rows:
        entry["error_rate"] = round(entry["failures"] / entry["requests"], 4) if entry["requests"] else 0.0
        if name == "Aggregated":
            total = entry
            continue
        p = partials.get(name)
        if p:
            entry["answers"] = p["answers"]
            entry["partial_rate"] = round(p["partial"] / p["answers"], 4) if p["answers"] else 0.0
        per_type[name] = entry
    answers = sum(p["answers"] for p in partials.values())
    partial = sum(p["partial"] for p in partials.values())
    return {**{k: str(v) for k, v in meta.items()}, "types": per_type, "total": total,
            "partial_rate": round(partial / answers, 4) if answers else 0.0}


def plot(out: Path, summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "locust_stats_history.csv")))
    agg = [r for r in rows if r["Name"] == "Aggregated"]
    if not agg:
        return []
    t0 = int(agg[0]["Timestamp"])
    ts = [int(r["Timestamp"]) - t0 for r in agg]
    made = []
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for col in ("50%", "95%", "99%"):
        ax.plot(ts, [_f(r[col]) for r in agg], label=f"p{col.rstrip('%')}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency, ms")
    ax.set_title(f"prism load test: {summary['collection']} at {summary['users']} users", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_percentiles.png", dpi=110)
    plt.close(fig)
    made.append("latency_percentiles.png")
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.plot(ts, [_f(r["Requests/s"]) for r in agg], label="requests/s")
    ax.plot(ts, [_f(r["Failures/s"]) for r in agg], label="failures/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "qps.png", dpi=110)
    plt.close(fig)
    made.append("qps.png")
    return made
