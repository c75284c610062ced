"""Snapshots of a collection: the request models, the manifest (build, version check, verify) and the file plan.

Pure: no I/O. A snapshot is a directory (or an S3 prefix) `<id>/` holding
    config.json                      the collection's config (spaces, layout, routing, mapping); never API keys
    metadata/mapping.json            the Elasticsearch mapping prism makes for it
    metadata/documents.parquet       the Elasticsearch documents at the cut: id, source (JSON)
    shards/<s>/points.parquet        shard s's points at the cut: id, payload (JSON)
    shards/<s>/<space>.parquet       shard s's vectors of one space: id, vector (float32 list)
    manifest.json                    written LAST: format, the cut, counts, sha256 and size of every file above
A snapshot without a manifest is incomplete (a crash mid-write) and is never restored.

The cut is each shard's sequencer sequence number (with its journal epoch): the snapshot holds exactly the writes
numbered up to it. Point-in-time restore replays the shard's archived journal (router.schema.archive) from those
numbers on.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, Field

from cluster.errors import InvalidRequest

FORMAT = 1  # bump on any change a reader of the older format would misread; `check_format` says why not
KNOWN_FORMATS = (1,)
MANIFEST = "manifest.json"
CONFIG = "config.json"
MAPPING = "metadata/mapping.json"
DOCUMENTS = "metadata/documents.parquet"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,190}$")


class SnapshotRequest(BaseModel):
    """`POST /v1/collections/{name}/snapshots`: no options yet (an empty body, or none)."""

    model_config = {"extra": "forbid"}


class RestoreRequest(BaseModel):
    """`POST /v1/collections/{new}/restore`: a new collection from a snapshot, its layout unless overridden."""

    model_config = {"extra": "forbid"}
    snapshot: str = Field(min_length=1, max_length=191)
    shards: int | None = Field(default=None, ge=1)
    replicas: int | None = Field(default=None, ge=1)
    routing: dict[str, Any] | None = None
    # a moment after the snapshot: an RFC 3339 time, or {"<shard>": seq} for every shard (router.schema.archive)
    at: str | dict[str, int] | None = None


class ShardCut(BaseModel):
    shard: int
    seq: int            # the last write of the shard the snapshot holds
    epoch: str = ""     # the journal those numbers belong to ("" where the ingress orders the writes itself)
    points: int = 0
    write_pause_ms: float = 0.0  # how long the shard's writes waited for the cut
    at: float = 0.0     # wall-clock seconds of the cut (0: an older snapshot): `at` restores start after it


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    format: int
    id: str
    collection: str
    created: str                      # RFC 3339, UTC
    prism: str = ""                   # the prism version that wrote it
    cut: list[ShardCut]
    counts: dict[str, int]            # "points" and one entry per space
    spaces: list[str]
    files: dict[str, FileEntry]
    seconds: float = 0.0


class SnapshotSummary(BaseModel):
    """A snapshot as listed: `complete: false` (no manifest: it was cut short) carries only its id."""

    id: str
    collection: str
    complete: bool
    created: str | None = None
    counts: dict[str, int] | None = None
    cut: dict[str, int] | None = None       # shard -> its sequence number at the cut
    seconds: float | None = None
    write_pause_ms: float | None = None     # the longest any shard's writes waited for the cut
    bytes: int | None = None


class SnapshotList(BaseModel):
    collection: str
    snapshots: list[SnapshotSummary]


class SnapshotDetail(SnapshotSummary):
    manifest: Manifest


class DeletedSnapshot(BaseModel):
    deleted: str


class RestoreResponse(BaseModel):
    collection: str
    snapshot: str
    points: int
    seconds: float
    replayed: dict[str, list[int]] | None = None  # with `at`: per shard, [first, last] archived write replayed


def check_id(snapshot_id: str) -> str:
    """A snapshot id is a path segment: letters, digits, `_ . -`, never `..` (no request builds a path elsewhere)."""
    if not isinstance(snapshot_id, str) or not _ID.match(snapshot_id) or ".." in snapshot_id:
        raise InvalidRequest(f"snapshot id {str(snapshot_id)[:80]!r} is not one prism makes", field="snapshot")
    return snapshot_id


def make_id(collection: str, stamp: str, suffix: str) -> str:
    """`<collection>-<UTC time>-<suffix>`: sorts by time within a collection."""
    return check_id(f"{collection}-{stamp}-{suffix}")


def shard_files(shard: int, spaces: Iterable[str]) -> list[str]:
    """The files of one shard, payloads first."""
    return [f"shards/{shard}/points.parquet"] + [f"shards/{shard}/{space}.parquet" for space in spaces]


def plan(shards: int, spaces: Iterable[str]) -> list[str]:
    """Every file a snapshot of `shards` shards holds, besides the manifest."""
    spaces = list(spaces)
    return [CONFIG, MAPPING, DOCUMENTS] + [f for s in range(shards) for f in shard_files(s, spaces)]


def build(*, snapshot_id: str, collection: str, created: str, prism: str, cut: list[ShardCut], spaces: list[str],
          files: dict[str, tuple[str, int]], counts: dict[str, int], seconds: float) -> Manifest:
    """The manifest; every planned file must be there (a snapshot never describes a file it did not write)."""
    missing = [f for f in plan(len(cut), spaces) if f not in files]
    if missing:
        raise ValueError(f"snapshot {snapshot_id}: files not written: {missing[:3]}")
    return Manifest(format=FORMAT, id=snapshot_id, collection=collection, created=created, prism=prism,
                    cut=sorted(cut, key=lambda c: c.shard), counts=counts, spaces=spaces, seconds=seconds,
                    files={f: FileEntry(sha256=h, bytes=n) for f, (h, n) in sorted(files.items())})


def check_format(raw: Any, snapshot_id: str) -> Manifest:
    """The manifest read from JSON, or a 422 saying why this prism cannot restore it."""
    if not isinstance(raw, dict) or "format" not in raw:
        raise InvalidRequest(f"snapshot {snapshot_id}: manifest.json is not a prism snapshot manifest",
                             field="snapshot")
    fmt = raw["format"]
    if fmt not in KNOWN_FORMATS:
        newer = isinstance(fmt, int) and fmt > FORMAT
        raise InvalidRequest(f"snapshot {snapshot_id}: manifest format {fmt!r} is unknown to this prism (it reads "
                             f"formats {list(KNOWN_FORMATS)}); "
                             + ("it was written by a newer prism: restore it with that version" if newer else
                                "it cannot be restored"), field="snapshot")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise InvalidRequest(f"snapshot {snapshot_id}: manifest.json is malformed: {str(exc)[:200]}",
                             field="snapshot") from None


def verify(manifest: Manifest, digest: Callable[[str], tuple[str, int] | None]) -> None:
    """Every file's sha256 and size against the manifest (`digest(path)` -> (sha256, bytes), None if absent);
    a 422 naming the first file that is missing or differs, before anything is built from it."""
    missing = [f for f in plan(len(manifest.cut), manifest.spaces) if f not in manifest.files]
    if missing:
        raise InvalidRequest(f"snapshot {manifest.id}: the manifest lists no {missing[0]}", field="snapshot")
    for path, want in manifest.files.items():
        got = digest(path)
        if got is None:
            raise InvalidRequest(f"snapshot {manifest.id}: file {path} is missing", field="snapshot")
        if got != (want.sha256, want.bytes):
            raise InvalidRequest(f"snapshot {manifest.id}: file {path} is corrupted (sha256 {got[0][:12]}..., "
                                 f"{got[1]} bytes; the manifest says {want.sha256[:12]}..., {want.bytes} bytes)",
                                 field="snapshot")


def restored_config(manifest_config: dict[str, Any], name: str, req: RestoreRequest) -> dict[str, Any]:
    """The new collection's body: the snapshot's config, renamed, with the request's layout overrides."""
    body = {k: v for k, v in manifest_config.items() if k != "name"}
    for key in ("shards", "replicas", "routing"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.replicas is not None and "write_quorum" in body and isinstance(body["write_quorum"], int):
        body["write_quorum"] = min(body["write_quorum"], req.replicas)
    return body
