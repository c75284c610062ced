"""Bulk ingestion: embedding on Ray Data, writes to prism in batches, resumable.

JSONL points -> skip ids already acknowledged (a ledger file) -> Ray Data `map_batches` with an actor pool per
encoder (the model loads once per actor) -> batched upserts that carry their vectors, so the server does not embed
again -> each acknowledged batch is appended to the ledger. A point that cannot be embedded (a broken image) is
reported with its reason; the rest land. Re-running the same command adds nothing that was acknowledged.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


class IngestError(Exception):
    pass


@dataclass
class IngestReport:
    points: int = 0          # in the file
    skipped: int = 0         # acknowledged by an earlier run
    upserted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def points_per_s(self) -> float:
        return self.upserted / self.seconds if self.seconds else 0.0


def read_points(path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    points, bad = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((f"line {lineno}", f"not JSON: {exc}"))
            continue
        if not isinstance(obj, dict) or "id" not in obj:
            bad.append((f"line {lineno}", "a point needs an 'id'"))
            continue
        payload = obj.get("payload", {k: v for k, v in obj.items() if k not in ("id", "vectors")})
        points.append({"id": str(obj["id"]), "payload": payload, "vectors": obj.get("vectors") or {}})
    return points, bad


class Ledger:
    """Ids acknowledged by the server, one per line, appended and flushed per batch."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done = set(path.read_text().split()) if path.exists() else set()

    def add(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        with open(self.path, "a") as f:
            f.write("".join(f"{i}\n" for i in ids))
            f.flush()
            os.fsync(f.fileno())
        self.done.update(ids)


class EmbedActor:
    """Ray Data callable class: one encoder per actor, embeds the spaces that use it (by `source_jobs`, the
    server's own rule for which payload field feeds which space)."""

    def __init__(self, encoder: str, spaces: dict[str, dict], models_dir: str | None = None):
        from cluster.collection_spec import SpaceConfig
        from router.encoding.embed import load_encoder

        self.encoder = load_encoder(encoder, models_dir)
        self.spaces = {name: SpaceConfig.model_validate(s) for name, s in spaces.items()}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from router.encoding.images import decode_image, is_inline, load_reference, local_path
        from router.encoding.vectors import source_jobs

        points = [json.loads(s) for s in batch["point"]]
        errors = list(batch["error"])
        texts: dict[str, list[tuple[int, str]]] = {}
        images: dict[str, list[tuple[int, str]]] = {}
        for i, p in enumerate(points):
            if not errors[i]:
                for space, value in source_jobs(p["payload"], p["vectors"], self.spaces)[0]:
                    kind = images if self.spaces[space].modality == "image" else texts
                    kind.setdefault(space, []).append((i, value))
        for space, items in images.items():
            src = self.spaces[space].source
            ok = []
            for i, ref in items:
                field = f"{points[i]['id']}.{src}"
                try:
                    ok.append((i, decode_image(load_reference(ref, field, allow_files=True), field)))
                except Exception as exc:  # noqa: BLE001 - this point fails, the others go on
                    errors[i] = getattr(exc, "message", str(exc))
            vecs = self.encoder.encode_images([img for _, img in ok]) if ok else []
            for (i, _), e in zip(ok, vecs):
                points[i]["vectors"][space] = e.vector.tolist()  # JSON edge: float32 until here
                ref = points[i]["payload"][src]
                if is_inline(ref) and local_path(ref) is None:
                    points[i]["payload"][src] = f"<inline image, {len(ref)} base64 characters>"
        for space, items in texts.items():
            for (i, _), e in zip(items, self.encoder.encode_documents([t for _, t in items])):
                points[i]["vectors"][space] = e.vector.tolist()  # JSON edge: float32 until here
        return {"point": [json.dumps(p) for p in points], "error": errors}


def run_ingest(path: str | Path, collection: str, url: str, *, batch_size: int = 64, write_batch: int = 256,
               concurrency: int = 1, ledger_path: str | Path, models_dir: str | None = None,
               progress: Callable[[int], None] | None = None, api_key: str | None = None) -> IngestReport:
    """Embed with Ray Data and write through prism's HTTP API; returns what happened."""
    import ray

    t0 = time.perf_counter()
    path = Path(path)
    url = url.rstrip("/")
    from cluster.auth import client_headers

    headers = client_headers(api_key)
    info = httpx.get(f"{url}/v1/collections/{collection}", headers=headers, timeout=30)
    if info.status_code != 200:
        raise IngestError(f"collection {collection!r} at {url}: HTTP {info.status_code} {info.text[:200]}")
    spaces = {n: s for n, s in info.json()["config"]["spaces"].items() if s.get("encoder") and s.get("source")}
    points, bad = read_points(path)
    ledger = Ledger(Path(ledger_path))
    report = IngestReport(points=len(points) + len(bad), failures=list(bad))
    todo = [p for p in points if p["id"] not in ledger.done]
    report.skipped = len(points) - len(todo)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    # The command's own progress bar speaks to people; Ray Data's executor logs do not.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{"point": json.dumps(p), "error": ""} for p in todo])
    by_encoder: dict[str, dict[str, dict]] = {}
    for name, s in spaces.items():
        by_encoder.setdefault(s["encoder"], {})[name] = s
    for encoder, enc_spaces in by_encoder.items():
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"encoder": encoder, "spaces": enc_spaces,
                                                               "models_dir": models_dir},
                            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=0)
    with httpx.Client(timeout=300, headers=headers) as client:
        for batch in ds.iter_batches(batch_size=write_batch, batch_format="default"):
            chunk, chunk_ids = [], []
            for s, err in zip(batch["point"], batch["error"]):
                p = json.loads(s)
                if err:
                    report.failures.append((p["id"], err))
                    continue
                chunk.append(p)
                chunk_ids.append(p["id"])
            if chunk:
                r = client.post(f"{url}/v1/collections/{collection}/points", json={"points": chunk})
                if r.status_code == 200:
                    body = r.json()
                    failed = {f["id"]: f["reason"] for f in body.get("failed", [])}
                    report.failures.extend(failed.items())
                    acked = [i for i in chunk_ids if i not in failed]
                    ledger.add(acked)
                    report.upserted += len(acked)
                else:
                    msg = r.json().get("message", r.text) if r.headers.get("content-type", "").startswith(
                        "application/json") else r.text
                    report.failures.extend((i, f"HTTP {r.status_code}: {msg[:200]}") for i in chunk_ids)
            if progress:
                progress(len(batch["point"]))
    report.seconds = time.perf_counter() - t0
    return report
