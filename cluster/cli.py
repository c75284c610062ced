"""The `prism` command: up, down, status, ingest, query, bench."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cluster.config import DEFAULT_DATA_DIR, DEFAULT_PORT, MilvusConfig, load_config
from cluster.errors import PrismError

app = typer.Typer(help="prism: sharded multimodal search on Ray + Milvus.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def _milvus(value: Optional[str]) -> Optional[dict]:
    if value is None:
        return None
    if value in ("lite", "bundled"):
        return {"mode": value}
    if value.startswith(("http://", "https://", "tcp://")):
        return {"mode": "server", "uri": value}
    raise typer.BadParameter(f"--milvus must be lite, bundled or a server URI, got {value!r}")


def _elasticsearch(value: Optional[str]) -> Optional[dict]:
    import os

    if value is None:
        return None
    if value in ("bundled", "off"):
        return {"mode": value}
    if value.startswith(("http://", "https://")):
        return {"mode": "external", "url": value, "api_key": os.environ.get("PRISM_ES_API_KEY"),
                "username": os.environ.get("PRISM_ES_USERNAME"), "password": os.environ.get("PRISM_ES_PASSWORD")}
    raise typer.BadParameter(f"--elasticsearch must be bundled, off or a URL, got {value!r}")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once /health is green."),
    port: Optional[int] = typer.Option(None, help=f"HTTP port (default {DEFAULT_PORT})."),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=f"Data directory (default {DEFAULT_DATA_DIR})."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file."),
    milvus: Optional[str] = typer.Option(None, "--milvus", help="lite | bundled | a Milvus server URI."),
    elasticsearch: Optional[str] = typer.Option(
        None, "--elasticsearch", help="bundled | off | an Elasticsearch URL (auth: PRISM_ES_API_KEY or "
                                      "PRISM_ES_USERNAME / PRISM_ES_PASSWORD)."),
) -> None:
    """Start Ray, the services prism needs, the shard actors and the HTTP endpoint."""
    from cluster import bootstrap

    try:
        cfg = load_config(config, port=port, host=host, data_dir=data_dir, milvus=_milvus(milvus),
                          elasticsearch=_elasticsearch(elasticsearch))
    except PrismError as exc:
        _fail(exc.message, 2)
    if detach:
        try:
            state = bootstrap.start_detached(cfg, config_file=str(Path(config).resolve()) if config else None)
        except PrismError as exc:
            _fail(exc.message)
        console.print(f"prism is up at [bold]{state['url']}[/bold] (pid {state['pid']}, data {state['data_dir']})")
        return
    raise typer.Exit(bootstrap.run_foreground(cfg))


@app.command()
def down(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir")) -> None:
    """Stop the instance started from DATA_DIR, and everything it started."""
    from cluster import bootstrap

    if bootstrap.stop_instance(data_dir):
        console.print("prism is down")
    else:
        console.print(f"no prism instance recorded in {Path(data_dir).resolve()}")


def _url(url: Optional[str], data_dir: str) -> str:
    if url:
        return url.rstrip("/")
    from cluster.bootstrap import read_state

    state = read_state(data_dir)
    if not state:
        _fail(f"no running prism recorded in {Path(data_dir).resolve()}; start one with `prism up --detach` "
              "or pass --url")
    return state["url"]


@app.command()
def status(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
           url: Optional[str] = typer.Option(None, help="Endpoint (default: the recorded instance).")) -> None:
    """Health, encoders, and per-shard point counts of every collection."""
    import httpx

    base = _url(url, data_dir)
    try:
        h = httpx.get(base + "/health", timeout=10).json()
    except httpx.HTTPError as exc:
        _fail(f"{base} does not answer: {exc}")
    console.print(f"prism {h['version']} at {base}: [green]{h['status']}[/green]")
    for name, enc in h["encoders"].items():
        state = f"{enc['dim']}-d" if enc["available"] else f"[red]unavailable[/red]: {enc['reason']}"
        console.print(f"  encoder {name}: {state}")
    for name in h["collections"]:
        info = httpx.get(f"{base}/v1/collections/{name}", timeout=30).json()
        table = Table(title=f"collection {name}: {info['counts']}")
        for col in ("shard", "replica", "state", "seq", "counts", "last error"):
            table.add_column(col)
        for s in info["shards"]:
            table.add_row(str(s["shard"]), str(s["replica"]), s["state"], f"{s['applied_seq']}/{s['shard_seq']}",
                          json.dumps(s["counts"]), s.get("last_error") or "")
        console.print(table)


@app.command()
def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines: one point per line."),
    collection: str = typer.Option(..., "--collection", "-c"),
    batch: int = typer.Option(64, "--batch", min=1, max=2000),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
) -> None:
    """Upsert points from FILE in batches, with a progress bar and a summary."""
    import httpx

    base = _url(url, data_dir)
    points, failures = [], []
    for lineno, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            failures.append((f"line {lineno}", f"not JSON: {exc}"))
            continue
        if not isinstance(obj, dict) or "id" not in obj:
            failures.append((f"line {lineno}", "a point needs an 'id'"))
            continue
        payload = obj.get("payload", {k: v for k, v in obj.items() if k not in ("id", "vectors")})
        points.append({"id": obj["id"], "payload": payload, **({"vectors": obj["vectors"]} if "vectors" in obj else {})})
    done, t0 = 0, time.perf_counter()
    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("points", total=len(points))
        with httpx.Client(timeout=120) as client:
            for start in range(0, len(points), batch):
                chunk = points[start : start + batch]
                r = client.post(f"{base}/v1/collections/{collection}/points", json={"points": chunk})
                if r.status_code == 200:
                    done += r.json()["upserted"]
                else:
                    reason = r.json().get("message", r.text) if r.headers.get("content-type", "").startswith(
                        "application/json") else r.text
                    failures.extend((p["id"], f"HTTP {r.status_code}: {reason}") for p in chunk)
                bar.advance(task, len(chunk))
    secs = time.perf_counter() - t0
    console.print(f"ingested {done} points in {secs:.1f}s ({done / secs if secs else 0:.1f} points/s), "
                  f"{len(failures)} failures")
    for ident, reason in failures[:20]:
        console.print(f"  [red]failed[/red] {ident}: {reason}")
    if failures:
        raise typer.Exit(1)


@app.command()
def query(
    text: str = typer.Argument(..., help="Query text, embedded into every text space of the collection."),
    collection: str = typer.Option(..., "--collection", "-c"),
    space: Optional[list[str]] = typer.Option(None, "--space", help="Spaces to search (default: all with an encoder)."),
    fusion: str = typer.Option("rrf", help="rrf | dbsf | none"),
    filter: Optional[str] = typer.Option(None, "--filter", help="Elasticsearch query DSL (JSON)."),
    limit: int = typer.Option(5, "--limit", "-k"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
) -> None:
    """Run a text query and print a ranked table."""
    import httpx

    base = _url(url, data_dir)
    info = httpx.get(f"{base}/v1/collections/{collection}", timeout=30)
    if info.status_code != 200:
        _fail(info.json().get("message", info.text))
    spaces = space or [n for n, s in info.json()["config"]["spaces"].items() if s.get("encoder")]
    body = {"prefetch": [{"space": s, "text": text} for s in spaces], "limit": limit,
            "fusion": {"method": fusion if len(spaces) > 1 else "none"}}
    if filter:
        try:
            body["filter"] = json.loads(filter)
        except json.JSONDecodeError as exc:
            _fail(f"--filter is not JSON: {exc}", 2)
    r = httpx.post(f"{base}/v1/collections/{collection}/query", json=body, timeout=60)
    if r.status_code != 200:
        _fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    answer = r.json()
    print_hits(answer, f"{text!r} in {'+'.join(spaces)} ({body['fusion']['method']})")


def print_hits(answer: dict, title: str) -> None:
    table = Table(title=title)
    for col in ("#", "id", "score", "name", "category", "price"):
        table.add_column(col)
    for i, h in enumerate(answer["hits"], start=1):
        p = h.get("payload") or {}
        table.add_row(str(i), h["id"], f"{h['score']:.4f}", str(p.get("name", "")), str(p.get("category", "")),
                      str(p.get("price", "")))
    console.print(table)
    cov = answer["coverage"]
    console.print(f"  {cov['shards_answered']}/{cov['shards_total']} shards answered, partial={answer['partial']}, "
                  f"took {answer['took_ms']:.1f} ms" + (f", notes: {answer['notes']}" if answer.get("notes") else ""))


@app.command()
def reshard(
    collection: str = typer.Option(..., "--collection", "-c"),
    shards: int = typer.Option(..., "--shards", min=1),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
) -> None:
    """Change a collection's shard count; only points whose ring owner changes move. Reads go on meanwhile."""
    import httpx

    base = _url(url, data_dir)
    r = httpx.post(f"{base}/v1/collections/{collection}/reshard", json={"shards": shards}, timeout=3600)
    if r.status_code != 200:
        _fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    rep = r.json()
    console.print(f"{collection}: now {rep['shards']} shards, moved {rep['moved']} points in {rep['seconds']}s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (same as `make bench`); extra arguments go to deploy.bench."""
    from deploy.bench import main

    main(list(ctx.args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
