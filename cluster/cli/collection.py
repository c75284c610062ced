"""The `prism` commands on one collection: ingest, query, verify, reshard, rebalance, and loadtest (and the hits table that
query and `make demo` print)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from cluster.cli.common import API_KEY, base_url, check_collection, console, fail, grpc_target
from cluster.cli.ingest import DIRECT_BELOW
from cluster.config import DEFAULT_DATA_DIR


def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines: one point per line."),
    collection: str = typer.Option(..., "--collection", "-c"),
    batch: int = typer.Option(64, "--batch", min=1, max=2000, help="Embedding batch size (Ray Data map_batches)."),
    write_batch: int = typer.Option(256, "--write-batch", min=1, max=2000, help="Points per upsert request."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="Encoder actors per encoder (Ray Data)."),
    direct_below: int = typer.Option(DIRECT_BELOW, "--direct-below", min=0,
                                     help="Fewer points than this left to write: the running instance's encoders "
                                          "embed them as it writes them (no Ray Data pipeline to start); 0: always "
                                          "Ray Data."),
    ledger: Optional[Path] = typer.Option(None, "--ledger",
                                          help="Acknowledged ids (default: DATA_DIR/ingest/<file>.<collection>.acked)."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Let Ray's and other libraries' log lines through to the console (by default "
                                      "they go to DATA_DIR/ingest/ingest.log)."),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Embed and upsert in batches, with a progress bar, a failure report, and resumability: small loads through
    the running instance's encoders, large ones on Ray Data (--direct-below)."""
    from contextlib import nullcontext

    from cluster.cli.bootstrap import local_ray_address
    from cluster.cli.ingest import IngestError, console_quiet, read_points, run_ingest

    check_collection(collection)
    base = base_url(url, data_dir)
    total = len(read_points(file)[0])
    quiet = nullcontext() if verbose else console_quiet(Path(data_dir) / "ingest" / "ingest.log")
    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("points", total=total)
        try:
            with quiet:
                rep = run_ingest(file, collection, base, batch_size=batch, write_batch=write_batch,
                                 concurrency=concurrency, direct_below=direct_below,
                                 ray_address=local_ray_address(data_dir, base),
                                 ledger_path=ledger or Path(data_dir) / "ingest" / f"{file.name}.{collection}.acked",
                                 progress=lambda n: bar.advance(task, n), api_key=api_key)
        except IngestError as exc:
            fail(f"{exc}; re-run the same command to resume")
    how = {"direct": ", embedded by the running instance",
           "ray-data": f", embedded on Ray Data in {rep.ray}"}.get(rep.path, "")
    console.print(f"ingested {rep.upserted} points in {rep.seconds:.1f}s ({rep.points_per_s:.1f} points/s{how}), "
                  f"{rep.skipped} already acknowledged, {len(rep.failures)} failures", soft_wrap=True)
    if rep.retried:
        console.print(f"{rep.retried} writes sent again after the server answered 503 or 429 (retry)")
    for ident, reason in rep.failures[:20]:
        console.print(Text.assemble("  ", ("failed", "red"), f" {ident}: {reason}"))
    if rep.failures:
        raise typer.Exit(1)


def query(
    text: str = typer.Argument(..., help="Query text, embedded into every text space of the collection."),
    collection: str = typer.Option(..., "--collection", "-c"),
    space: Optional[list[str]] = typer.Option(None, "--space", help="Spaces to search (default: all with an encoder)."),
    fusion: str = typer.Option("rrf", help="rrf | dbsf | none"),
    filter: Optional[str] = typer.Option(None, "--filter", help="Elasticsearch query DSL (JSON)."),
    limit: int = typer.Option(5, "--limit", "-k"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None, help="http(s)://host:port, grpc://host:port or grpcs://host:port (TLS; "
                                                 "the CA from $PRISM_TLS_CA, else the system's) (default: the "
                                                 "recorded instance)."),
    protocol: str = typer.Option("http", "--protocol", help="http | grpc: with grpc, the recorded instance's gRPC "
                                                             "port (or --url grpc://...)."),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Run a text query and print a ranked table (through PrismClient, over HTTP or gRPC)."""
    from cluster.client import PrismClient, PrismClientError

    if protocol not in ("http", "grpc"):
        fail(f"--protocol: expected http or grpc, got {protocol!r}", 2)
    check_collection(collection)
    if url:
        endpoint = url.rstrip("/")
    elif protocol == "grpc":
        target = grpc_target(data_dir)
        if not target:
            fail(f"no gRPC port recorded in {Path(data_dir).resolve()} (prism up --grpc-port 0?); pass "
                  "--url grpc://host:port", 2)
        endpoint = f"grpc://{target}"
    else:
        endpoint = base_url(None, data_dir)
    body: dict = {"limit": limit}
    if filter:
        try:
            body["filter"] = json.loads(filter)
        except json.JSONDecodeError as exc:
            fail(f"--filter is not JSON: {exc}", 2)
    try:
        import os

        with PrismClient(endpoint, api_key=api_key, tls_ca=os.environ.get("PRISM_TLS_CA") or None) as client:
            spaces = space or [n for n, s in client.get_collection(collection)["config"]["spaces"].items()
                               if s.get("encoder")]
            body["prefetch"] = [{"space": s, "text": text} for s in spaces]
            body["fusion"] = {"method": fusion if len(spaces) > 1 else "none"}
            answer = client.query(collection, body)
    except PrismClientError as exc:
        fail(f"{exc.status}: {exc.message}" + (f" ({exc.field})" if exc.field else ""))
    print_hits(answer, f"{text!r} in {'+'.join(spaces)} ({body['fusion']['method']})")


def verify(
    collection: str = typer.Option(..., "--collection", "-c"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None, help="Endpoint (default: the recorded instance)."),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Compare the ids the shards (Milvus) hold with Elasticsearch's documents, and every shard's replicas with each
    other (ids and contents, by digest); exit 1 naming what differs (shard, replica, up to 100 ids)."""
    import httpx

    from cluster.auth import client_headers

    check_collection(collection)
    base = base_url(url, data_dir)
    try:
        r = httpx.get(f"{base}/v1/collections/{collection}/verify", headers=client_headers(api_key), timeout=600)
    except httpx.HTTPError as exc:
        fail(f"{base} does not answer: {exc}")
    if r.status_code != 200:
        fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    v = r.json()
    table = Table(title=f"collection {collection}: shards vs Elasticsearch")
    for col in ("points on shards", "Elasticsearch documents", "missing in Elasticsearch", "extra in Elasticsearch"):
        table.add_column(col)
    table.add_row(str(v["shard_points"]), str(v["elasticsearch_documents"]), str(v["missing_in_elasticsearch"]),
                  str(v["extra_in_elasticsearch"]))
    console.print(table)
    if not v["drift"]:
        console.print("  no drift: every point is in both stores, and every shard's replicas hold the same points")
        return
    for label, key in (("missing in Elasticsearch", "sample_missing"), ("extra in Elasticsearch", "sample_extra")):
        if v[key]:
            console.print(f"  {label}: {', '.join(v[key])}", markup=False)
    if v.get("misplaced"):
        console.print(f"  {v['misplaced']} point copies on a shard their placement does not put them on:", markup=False)
        for m in v.get("sample_misplaced", []):
            where = "no readable routing key" if m["placement"] is None else f"belongs on shard {m['placement']}"
            console.print(f"    {m['id']} on shard {m['shard']} ({where})", markup=False)
    for d in v.get("replica_differences", []):
        where = f"  shard {d['shard']} replica {d['replica']}"
        if d.get("error"):
            console.print(f"{where}: not compared: {d['error']}", markup=False)
        else:
            console.print(f"{where} differs from replica {d['reference']} in {d['differing']} ids: "
                          f"{', '.join(d['ids'])}", markup=False)
    what = [w for w, bad in (("the shards and Elasticsearch", v["missing_in_elasticsearch"] or
                              v["extra_in_elasticsearch"]), ("replicas of a shard", not v.get("replicas_equal", True)),
                             ("points and their placement", v.get("misplaced")))
            if bad]
    fail(f"{' and '.join(what) or 'the stores'} differ (re-run if writes were in flight)")


def print_hits(answer: dict, title: str) -> None:
    table = Table(title=title)
    for col in ("#", "id", "score", "name", "category", "price"):
        table.add_column(col)
    for i, h in enumerate(answer["hits"], start=1):
        p = h.get("payload") or {}
        price = p.get("price", "")
        if isinstance(price, float) and price.is_integer():
            price = int(price)  # 29.0 over HTTP is 29 over gRPC (a Struct number): print both alike
        table.add_row(str(i), h["id"], f"{h['score']:.4f}", str(p.get("name", "")), str(p.get("category", "")),
                      str(price))
    console.print(table)
    cov = answer["coverage"]
    routed = cov.get("routed")
    visited = f" (visited {routed})" if routed is not None and len(routed) < cov["shards_total"] else ""
    console.print(f"  {cov['shards_answered']}/{cov['shards_total']} shards answered{visited}, "
                  f"partial={answer['partial']}, "
                  f"took {answer['took_ms']:.1f} ms" + (f", notes: {answer['notes']}" if answer.get("notes") else ""))


def reshard(
    collection: str = typer.Option(..., "--collection", "-c"),
    shards: int = typer.Option(..., "--shards", min=1),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Change a collection's shard count; only points whose ring owner changes move. Reads go on meanwhile."""
    import httpx

    from cluster.auth import client_headers

    check_collection(collection)
    base = base_url(url, data_dir)
    r = httpx.post(f"{base}/v1/collections/{collection}/reshard", json={"shards": shards},
                   headers=client_headers(api_key), timeout=3600)
    if r.status_code != 200:
        fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    rep = r.json()
    console.print(f"{collection}: now {rep['shards']} shards, moved {rep['moved']} points in {rep['seconds']}s")


def rebalance(
    collection: str = typer.Option(..., "--collection", "-c"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Vector routing: train the centroids and move every point to its nearest centroid's shard. Reads and writes go
    on meanwhile; one status line shows the state (training, moving: points moved) until it is done."""
    import threading

    import httpx

    from cluster.auth import client_headers

    check_collection(collection)
    base, headers = base_url(url, data_dir), client_headers(api_key)
    answer: dict = {}

    def post() -> None:
        try:
            answer["r"] = httpx.post(f"{base}/v1/collections/{collection}/rebalance", json={}, headers=headers,
                                     timeout=24 * 3600)
        except httpx.HTTPError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    with console.status(f"{collection}: rebalancing") as line:
        while worker.is_alive():
            worker.join(0.5)
            try:  # the state as GET shows it; a failed look is only a missed update of the line
                routing = httpx.get(f"{base}/v1/collections/{collection}", headers=headers, timeout=5).json()["routing"]
                line.update(f"{collection}: {routing.get('state')}, {routing.get('moved', 0)} points moved")
            except (httpx.HTTPError, KeyError, ValueError):
                pass
    if "error" in answer:
        fail(f"cannot reach {base}: {answer['error']}")
    r = answer["r"]
    if r.status_code != 200:
        fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    rep = r.json()
    table = Table("collection", "state", "centroids", "trained", "moved", "spread", "seconds")
    table.add_row(rep["collection"], rep["state"], str(rep["centroids"]), str(rep["trained"]), str(rep["moved"]),
                  f"{rep['spread']:.3f}", f"{rep['seconds']}")
    console.print(table)


def loadtest(
    url: Optional[str] = typer.Option(None, help="prism endpoint (default: the recorded local instance)."),
    collection: str = typer.Option(..., "--collection", "-c"),
    users: int = typer.Option(8, "--users", "-u"),
    spawn_rate: float = typer.Option(8.0, "--spawn-rate", "-r"),
    run_time: str = typer.Option("30s", "--run-time", "-t"),
    out: str = typer.Option("loadtest-report", "--out", help="Report directory."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Query corpus, one query per line."),
    write_share: float = typer.Option(0.0, "--write-share", help="Fraction of steps that write (0..1)."),
    filter: Optional[str] = typer.Option(None, "--filter", help="Filter (JSON) for the filtered mix."),
    api_key: Optional[str] = API_KEY,
    protocol: str = typer.Option("http", "--protocol", help="http | grpc (the same mix through the gRPC API)."),
    grpc: Optional[str] = typer.Option(None, "--grpc", help="gRPC host:port (default: the recorded instance's)."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
) -> None:
    """Headless Locust run with realistic query mixes; writes CSV, summary.json and PNG plots."""
    check_collection(collection)
    try:
        from deploy.loadtest.harness import LoadTestError, run_loadtest
    except ImportError as exc:
        fail(f"prism loadtest needs the bench extra (pip install 'prism-search[bench]'): {exc}", 2)

    try:
        summary = run_loadtest(base_url(url, data_dir), collection, users=users, spawn_rate=spawn_rate,
                               run_time=run_time, out_dir=out, corpus=corpus, write_share=write_share,
                               filter_json=filter, api_key=api_key, protocol=protocol,
                               grpc_target=(grpc or grpc_target(data_dir)) if protocol == "grpc" else None)
    except LoadTestError as exc:
        fail(str(exc), 2)
    t = summary["total"]
    console.print(f"{t['requests']} requests, {t['qps']} req/s, p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, "
                  f"errors {t['error_rate']:.2%}, partial answers {summary['partial_rate']:.2%}; report in {out}")
