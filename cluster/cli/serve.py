"""The `prism` commands that run an instance: up, down, status, and bench."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from cluster.cli.common import API_KEY, base_url, console, err, fail
from cluster.config import DEFAULT_DATA_DIR, DEFAULT_GRPC_PORT, DEFAULT_PORT, load_config
from cluster.errors import PrismError


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
        fail(exc.message, 2)
    if detach:
        err.print(access)
        try:
            state = bootstrap.start_detached(cfg, config_file=str(Path(config).resolve()) if config else None)
        except PrismError as exc:
            fail(exc.message)
        console.print(Text.assemble("prism is up at ", (state["url"], "bold"),
                                    f" (pid {state['pid']}, data {state['data_dir']})"))
        return
    raise typer.Exit(bootstrap.run_foreground(cfg))


def down(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir")) -> None:
    """Stop the instance started from DATA_DIR, and everything it started."""
    from cluster.cli import bootstrap

    if bootstrap.stop_instance(data_dir):
        console.print("prism is down")
    else:
        console.print(f"no prism instance recorded in {Path(data_dir).resolve()}")


def status(data_dir: str = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
           url: Optional[str] = typer.Option(None, help="Endpoint (default: the recorded instance)."),
           api_key: Optional[str] = API_KEY) -> None:
    """Health, access control, encoders, and per-shard point counts of every collection."""
    import httpx

    from cluster.auth import client_headers
    from cluster.cli.bootstrap import read_state

    base = base_url(url, data_dir)
    headers = client_headers(api_key)
    try:
        h = httpx.get(base + "/health", headers=headers, timeout=10).json()  # lists what this key may see
    except httpx.HTTPError as exc:
        fail(f"{base} does not answer: {exc}")
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
            fail(f"HTTP {r.status_code}: {r.json().get('message', r.text)}")
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


def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (same as `make bench`); extra arguments go to deploy.bench."""
    from deploy.bench import main

    main(list(ctx.args))
