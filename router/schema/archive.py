"""The journal archive's index and point-in-time restore's choices: which archived writes to replay for a target.
Pure: no I/O (the archive's writer is router.replication.archive; restore reads through router.collection.restore).

The archive of one shard's journal (one epoch of it) lives in the snapshot store under
    archive/<collection>/s<shard>/<epoch>/index.json                    this module's ArchiveIndex, rewritten last
    archive/<collection>/s<shard>/<epoch>/seg-<first>-<last>.jsonl      the writes numbered first..last, one JSON
                                                                       frame a line (router.replication.oplog)
Segments follow each other without a hole, except where a gap is recorded: writes that were dropped unarchived (the
store was unreachable for longer than the archive holds writes) or that a sequencer restart lost. The index says
through when it is complete: every write stamped before `through` is numbered <= `upto` and archived, or in a gap.

A target is a time T (the writes stamped <= T) or a sequence number per shard; either is refused (422, saying why)
before the snapshot's cut, past the archived history, or across a gap.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from cluster.errors import InvalidRequest

INDEX_FORMAT = 1
INDEX = "index.json"


class Segment(BaseModel):
    file: str
    first: int
    last: int
    first_at: float
    last_at: float
    sha256: str
    bytes: int


class Gap(BaseModel):
    first: int
    last: int
    noted: float  # wall-clock seconds when the archive found it


class ArchiveIndex(BaseModel):
    format: int = INDEX_FORMAT
    collection: str
    shard: int
    epoch: str
    segments: list[Segment] = Field(default_factory=list)
    gaps: list[Gap] = Field(default_factory=list)
    upto: int = 0          # the last write archived (or lost in a gap)
    through: float = 0.0   # every write stamped before this is numbered <= upto


def prefix(collection: str, shard: int, epoch: str) -> str:
    """The archive's folder in the snapshot store (an epoch of "" is a shard whose writes were never archived)."""
    return f"archive/{collection}/s{shard}/{epoch or 'none'}"


def segment_name(first: int, last: int) -> str:
    return f"seg-{first:012d}-{last:012d}.jsonl"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(raw: str) -> float:
    """An RFC 3339 time (with its offset, or Z) as seconds since the epoch; 422 otherwise."""
    try:
        t = datetime.fromisoformat(raw.strip())
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise InvalidRequest(f"at {raw[:60]!r} is not an RFC 3339 time with its offset (e.g. "
                             "2026-12-05T10:00:00.5Z)", field="at")
    return t.timestamp()


def parse_at(raw: Any, shards: Iterable[int]) -> float | dict[int, int]:
    """`at` as a time (seconds since the epoch) or as {shard: seq} naming every shard of the snapshot."""
    if isinstance(raw, str):
        return parse_time(raw)
    shards = sorted(shards)
    if not isinstance(raw, dict):
        raise InvalidRequest("at must be an RFC 3339 time or {\"<shard>\": seq, ...}", field="at")
    out: dict[int, int] = {}
    for key, seq in raw.items():
        if not str(key).isdigit() or int(key) not in shards:
            raise InvalidRequest(f"at names shard {str(key)[:20]!r}; the snapshot's shards are {shards}", field="at")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidRequest(f"at[{key}] must be a sequence number (an integer >= 0), not {seq!r}", field="at")
        out[int(key)] = seq
    missing = [s for s in shards if s not in out]
    if missing:
        raise InvalidRequest(f"at names no sequence number for shard(s) {missing}: name every shard's", field="at")
    return out


def check_index(index: ArchiveIndex, where: str) -> None:
    """Segments in order, each following the last (or a recorded gap), none past `upto`; 422 naming the file."""
    last = 0
    gaps = sorted(index.gaps, key=lambda g: g.first)
    for seg in sorted(index.segments, key=lambda s: s.first):
        while gaps and gaps[0].first == last + 1:
            last = gaps.pop(0).last
        if seg.first != last + 1 or seg.last < seg.first or seg.file != segment_name(seg.first, seg.last):
            raise InvalidRequest(f"{where}: segment {seg.file} does not follow write {last} (the archive's index is "
                                 "damaged)", field="at")
        last = seg.last
    if last > index.upto:
        raise InvalidRequest(f"{where}: its segments run past the index's last write {index.upto}", field="at")


def segments_after(index: ArchiveIndex, since: int, upto: int | None = None) -> list[Segment]:
    """The segments holding writes numbered after `since` (and at most `upto`), in order."""
    return [s for s in sorted(index.segments, key=lambda s: s.first)
            if s.last > since and (upto is None or s.first <= upto)]


def target(ops: Sequence[tuple[int, float]], *, since: int, cut_at: float, index: ArchiveIndex, where: str,
           at: float | None = None, seq: int | None = None) -> int:
    """The last write to replay on one shard: `ops` are the archived (seq, stamped time) after the snapshot's cut
    `since`, in order; `at` a time or `seq` a sequence number. Refused before the cut, past the archive, or when a
    write to replay is missing (a gap: it names the writes)."""
    if seq is not None:
        if seq < since:
            raise InvalidRequest(f"{where}: at {seq} is before the snapshot's cut (write {since})", field="at")
        if seq > index.upto:
            raise InvalidRequest(f"{where}: at {seq} is past the archived history (archived up to write "
                                 f"{index.upto})", field="at")
    else:
        assert at is not None
        if at < cut_at:
            raise InvalidRequest(f"{where}: at {rfc3339(at)} is before the snapshot's cut ({rfc3339(cut_at)})",
                                 field="at")
        if at >= index.through:
            raise InvalidRequest(f"{where}: at {rfc3339(at)} is past the archived history (complete until "
                                 f"{rfc3339(index.through) if index.through else 'nothing was archived'})",
                                 field="at")
    chosen, expected = since, since + 1
    for s, t in ops:
        if s < expected:
            continue
        if seq is not None and s > seq:
            return chosen
        if s != expected:
            break  # a hole: the writes in it may be before the target, whatever their times
        if at is not None and t > at:
            return chosen
        chosen, expected = s, s + 1
    if chosen >= (seq if seq is not None else index.upto):
        return chosen
    gap = next((g for g in index.gaps if g.first <= expected <= g.last), None)
    missing = f"writes {gap.first}..{gap.last} were lost before they were archived" if gap else \
        f"write {expected} is missing from the archive"
    raise InvalidRequest(f"{where}: a gap in the archived history: {missing}; restore to a moment before it",
                         field="at")


def fold(points: dict[str, dict[str, Any]], ops: Iterable[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """One shard's points (upsert bodies by id: id, payload, vectors) with its writes `ops` (kind, args: PointRows
    and ids as logged) applied in order; a new dict. A partial update was logged as the whole point it wrote."""
    out = dict(points)

    def put(rows: Iterable[Any]) -> None:
        for r in rows:
            out[r.id] = {"id": r.id, "payload": dict(r.payload), **({"vectors": dict(r.vectors)} if r.vectors else {})}

    for kind, args in ops:
        if kind == "upsert":
            put(args)
        elif kind == "delete":
            for pid in args:
                out.pop(str(pid), None)
        elif kind == "restore":  # a refused write undone: the rows put back, the ids it had added removed
            put(args[0])
            for pid in args[1]:
                out.pop(str(pid), None)
        else:
            raise ValueError(f"unknown write kind {kind!r}")
    return out
