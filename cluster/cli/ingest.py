"""Bulk ingestion: JSONL points written to a running prism in batches, resumable, with a failure report.

JSONL points -> skip ids already acknowledged (a ledger file) -> embed -> batched upserts -> each acknowledged batch
is appended to the ledger. Re-running the same command adds nothing that was acknowledged. A point that cannot be
embedded (a broken image) or that the server refuses on its own (no source text, a payload too large) is reported
with its reason; the rest land. How the points are embedded depends on how many are left to write:

- fewer than `direct_below` (DIRECT_BELOW, 2,000; `prism ingest --direct-below`): the points go to the server as
  they are and the running instance's encoder deployments embed them on the write path, as for any HTTP upsert.
  Nothing starts: a small load takes about as long as its upserts (the 64-point sample catalog: ~1-2 s, where a
  Ray Data pipeline took ~20 s to start). A local image file named in an image space's source field is sent inline
  (base64), so the stored payload holds the server's "<inline image, N base64 characters>" in its place.
- otherwise: Ray Data (`cluster.cli.ingest_ray`) embeds with an encoder actor pool per encoder, and the upserts carry
  their vectors, so the server does not embed again. `prism ingest` into the instance recorded in its data dir
  joins that instance's own Ray cluster (no cluster to start); elsewhere it starts one for the command.
"""
from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Below this many points left to write, the running instance embeds them (no Ray Data pipeline to start).
DIRECT_BELOW = 2_000
# A refusal that names one point (`points[3].payload` from prism's checks, `points.3.id` from request validation).
POINT_FIELD = re.compile(r"^points(?:\[(\d+)\]|\.(\d+))")


class IngestError(Exception):
    pass


@dataclass
class IngestReport:
    points: int = 0          # in the file
    skipped: int = 0         # acknowledged by an earlier run
    upserted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    path: str = ""           # "direct" (the running instance embeds) or "ray-data"; "" when nothing was left
    ray: str = ""            # on "ray-data": which Ray cluster ran it (cluster.cli.ingest_ray.RAY_JOINED, ...)
    retried: int = 0         # writes sent again after a 503 or 429 (the server said: retry)

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



class Writer:
    """Upserts batches of points, appends what the server acknowledged to the ledger, and reports the rest.

    A refusal that names one point (the server validates a whole request before writing any of it) fails that
    point alone, with the server's reason, and the rest of its batch is sent again. A 503 (a shard did not
    acknowledge in time, writes paused by a reshard: "retry") or a 429 (rate limit) is sent again after the
    server's Retry-After or a backoff of 1, 2, 4, 8 s, at most `retries` times, before its points are reported as
    failures (a write prism did not acknowledge is safe to send again: upserts by id are idempotent)."""

    RETRY_STATUS = (429, 503)

    def __init__(self, client: httpx.Client, url: str, collection: str, ledger: Ledger, report: IngestReport,
                 progress: Callable[[int], None] | None, retries: int = 5,
                 sleep: Callable[[float], None] = time.sleep):
        self.client, self.endpoint = client, f"{url}/v1/collections/{collection}/points"
        self.ledger, self.report, self.progress = ledger, report, progress
        self.retries, self.sleep = retries, sleep

    def _wait_s(self, r: httpx.Response, attempt: int) -> float:
        """The server's Retry-After in seconds (capped at 30 s); else, or where it is no positive number (an
        HTTP date, 0, negative, nan), a backoff of 1, 2, 4, 8 s."""
        try:
            asked = float(r.headers["retry-after"])
        except (KeyError, ValueError):
            asked = 0.0
        return min(30.0, asked) if asked > 0 else float(min(8, 2 ** attempt))

    def write(self, batch: list[tuple[dict, str]]) -> None:
        """`batch`: (point, error) pairs; a point with an error is reported, not sent."""
        chunk = []
        for p, err in batch:
            if err:
                self.report.failures.append((p["id"], err))
            else:
                chunk.append(p)
        attempt = 0
        while chunk:
            r = self.client.post(self.endpoint, json={"points": chunk})
            if r.status_code in self.RETRY_STATUS and attempt < self.retries:
                self.sleep(self._wait_s(r, attempt))  # the server asked for it: not a guess at a condition
                attempt += 1
                self.report.retried += 1
                continue
            if r.status_code == 200:
                failed = {f["id"]: f["reason"] for f in r.json().get("failed", [])}
                self.report.failures.extend(failed.items())
                acked = [p["id"] for p in chunk if p["id"] not in failed]
                self.ledger.add(acked)
                self.report.upserted += len(acked)
                break
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            msg = body.get("message", r.text) if isinstance(body, dict) else r.text
            one = POINT_FIELD.match(str(body.get("field", ""))) if isinstance(body, dict) else None
            if one and 400 <= r.status_code < 500 and r.status_code != 413:
                i = int(one.group(1) or one.group(2))
                if i < len(chunk):
                    self.report.failures.append((chunk.pop(i)["id"], f"HTTP {r.status_code}: {msg[:200]}"))
                    continue
            self.report.failures.extend((p["id"], f"HTTP {r.status_code}: {msg[:200]}") for p in chunk)
            break
        if self.progress:
            self.progress(len(batch))


def inline_local_images(points: list[dict], spaces: dict[str, dict]) -> Iterator[tuple[dict, str]]:
    """(point, error) pairs: a local file named in an image space's source field read and sent inline (the server
    reads no files); a file that cannot be read fails its point."""
    from router.encoding.images import load_reference, local_path

    images = {name: s["source"] for name, s in spaces.items() if s.get("modality") == "image"}
    for p in points:
        err = ""
        for name, src in images.items():
            ref = p["payload"].get(src)
            if name in p["vectors"] or not isinstance(ref, str) or not (ref.startswith("file://") or local_path(ref)):
                continue
            try:
                data = load_reference(ref, f"{p['id']}.{src}", allow_files=True)
            except Exception as exc:  # noqa: BLE001 - this point fails, the others go on
                err = getattr(exc, "message", str(exc))
                break
            p = {**p, "payload": {**p["payload"], src: base64.b64encode(data).decode()}}
        yield p, err


def run_ingest(path: str | Path, collection: str, url: str, *, batch_size: int = 64, write_batch: int = 256,
               concurrency: int = 1, ledger_path: str | Path, models_dir: str | None = None,
               progress: Callable[[int], None] | None = None, api_key: str | None = None,
               direct_below: int = DIRECT_BELOW, ray_address: str | None = None) -> IngestReport:
    """Embed (through the running instance below `direct_below` points left to write, else on Ray Data) and write
    through prism's HTTP API; returns what happened. `batch_size` and `concurrency` are Ray Data's; `ray_address`,
    the running instance's Ray cluster on this host (`local_ray_address`), which Ray Data joins instead of starting
    one of its own."""
    from cluster.auth import client_headers

    t0 = time.perf_counter()
    path = Path(path)
    url = url.rstrip("/")
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
    if todo:
        report.path = "direct" if len(todo) < direct_below else "ray-data"
        # Server-side embedding of a full batch on a CPU takes seconds: the timeout is for a server that is gone.
        with httpx.Client(timeout=300, headers=headers) as client:
            writer = Writer(client, url, collection, ledger, report, progress)
            if report.path == "direct":
                for i in range(0, len(todo), write_batch):
                    writer.write(list(inline_local_images(todo[i: i + write_batch], spaces)))
            else:
                from cluster.cli.ingest_ray import connect, embedded_batches

                report.ray = connect(ray_address)
                for batch in embedded_batches(todo, spaces, batch_size=batch_size, write_batch=write_batch,
                                              concurrency=concurrency, models_dir=models_dir):
                    writer.write(batch)
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def console_quiet(log_path: Path) -> Iterator[None]:
    """Everything written to this process's stderr (fd 2) goes to `log_path` meanwhile: Ray Data's INFO/WARNING
    lines, core_worker's C++ log lines, library warnings, and the same from the processes started meanwhile (they
    inherit the descriptor). stdout, where the progress bar and the report go, is left alone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
