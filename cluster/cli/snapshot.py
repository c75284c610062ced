"""`prism snapshot create|list|delete|restore`: a collection's snapshots over the HTTP API (admin key)."""
from __future__ import annotations

import json
from typing import Any, Optional

import typer

from cluster.cli.common import API_KEY, base_url, check_collection, console, fail
from cluster.config import DEFAULT_DATA_DIR

snapshot_app = typer.Typer(help="Online snapshots of a collection, and restore into a new one.", no_args_is_help=True)
COLLECTION = typer.Option(..., "--collection", "-c")
DATA_DIR = typer.Option(DEFAULT_DATA_DIR, "--data-dir")
URL = typer.Option(None)


def _call(method: str, path: str, data_dir: str, url: str | None, api_key: str | None, body: Any = None) -> Any:
    import httpx

    from cluster.auth import client_headers

    r = httpx.request(method, f"{base_url(url, data_dir)}{path}", json=body, headers=client_headers(api_key),
                      timeout=3600)
    if r.status_code != 200:
        try:
            message = r.json().get("message", r.text)
        except ValueError:
            message = r.text
        fail(f"HTTP {r.status_code}: {message}")
    return r.json()


@snapshot_app.command("create")
def create(collection: str = COLLECTION, data_dir: str = DATA_DIR, url: Optional[str] = URL,
           api_key: Optional[str] = API_KEY) -> None:
    """Snapshot a collection while reads and writes go on; prints the snapshot's id."""
    check_collection(collection)
    s = _call("POST", f"/v1/collections/{collection}/snapshots", data_dir, url, api_key)
    console.print(f"{s['id']}: {s['counts']['points']} points, cut {s['cut']}, {s['bytes']} bytes in "
                  f"{s['seconds']}s (longest write pause {s['write_pause_ms']} ms)")


@snapshot_app.command("list")
def list_(collection: str = COLLECTION, data_dir: str = DATA_DIR, url: Optional[str] = URL,
          api_key: Optional[str] = API_KEY) -> None:
    """A collection's snapshots, oldest first."""
    check_collection(collection)
    for s in _call("GET", f"/v1/collections/{collection}/snapshots", data_dir, url, api_key)["snapshots"]:
        if s["complete"]:
            console.print(f"{s['id']}  {s['created']}  {s['counts']['points']} points  {s['bytes']} bytes")
        else:
            console.print(f"{s['id']}  incomplete (no manifest)")


@snapshot_app.command("delete")
def delete(snapshot: str = typer.Argument(...), collection: str = COLLECTION, data_dir: str = DATA_DIR,
           url: Optional[str] = URL, api_key: Optional[str] = API_KEY) -> None:
    """Delete one snapshot's files."""
    check_collection(collection)
    console.print(f"deleted {_call('DELETE', f'/v1/collections/{collection}/snapshots/{snapshot}', data_dir, url, api_key)['deleted']}")


@snapshot_app.command("restore")
def restore(snapshot: str = typer.Argument(...),
            collection: str = typer.Option(..., "--collection", "-c", help="The NEW collection to build."),
            shards: Optional[int] = typer.Option(None, "--shards", min=1),
            replicas: Optional[int] = typer.Option(None, "--replicas", min=1),
            at: Optional[str] = typer.Option(None, "--at", help="A moment after the snapshot: an RFC 3339 time, or "
                                             "per-shard sequence numbers as JSON ({\"0\": 120, \"1\": 98})."),
            data_dir: str = DATA_DIR, url: Optional[str] = URL, api_key: Optional[str] = API_KEY) -> None:
    """Build a new collection from a snapshot (its layout unless --shards / --replicas say otherwise), brought to
    --at with the archived journal."""
    check_collection(collection)
    body: dict[str, Any] = {"snapshot": snapshot}
    if shards is not None:
        body["shards"] = shards
    if replicas is not None:
        body["replicas"] = replicas
    if at is not None:
        try:
            body["at"] = json.loads(at) if at.lstrip().startswith("{") else at
        except ValueError:
            fail(f"--at {at[:60]!r} is neither an RFC 3339 time nor JSON like {{\"0\": 120}}")
    r = _call("POST", f"/v1/collections/{collection}/restore", data_dir, url, api_key, body)
    replayed = f", archived writes replayed {r['replayed']}" if r.get("replayed") is not None else ""
    console.print(f"{r['collection']}: {r['points']} points restored from {r['snapshot']}{replayed} in {r['seconds']}s")
