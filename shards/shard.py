"""A shard replica: one Milvus collection per vector space. Plain, synchronous Python: the methods of
`shards.api.ShardApi`, which `shards.local` (threads) and `shards.actor` (a Ray actor) make asynchronous."""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster.collection_spec import CollectionConfig, check_index_support
from cluster.config import BatchSettings
from cluster.errors import BackendError, PrismError, SpaceNotFound, WriteRefused
from shards.api import EXPORT_PAGE, PointRow, ScoredId, SearchSpec, StoredPoint
from shards.digest import ReplicaDigest, row_hash
from shards.backend import (ID_FIELD, META_FIELD, PAYLOAD_FIELD, VECTOR_FIELD, BackendSpec, MilvusBackend,
                            search_params)
from shards.group_commit import GroupCommit, plan_groups, split_hits
from shards.seal import Sealer, seal_policy

# A Milvus server that is down or restarting: a call is retried this many times, after these pauses, before the
# replica reports the fault (the router then fails over, and its heal loop keeps probing with its own backoff).
RETRY_PAUSES_S = (0.05, 0.25)
# How long a request waits for its collections to load after a restart (of the actor or of Milvus) before it
# fails, so that the router can fail over; the load itself goes on in Milvus and the heal probe waits for it.
RELOAD_WAIT_S = 2.0
HEAL_RELOAD_WAIT_S = 60.0


def milvus_fault(exc: BaseException) -> str | None:
    """'unreachable' (the server is down), 'not_loaded' (it restarted and has not loaded the collection yet),
    'loading' (a load did not finish within its wait) or None (any other error: not retried here)."""
    text = str(exc)
    if "wait for loading collection timeout" in text:
        return "loading"
    if "not loaded" in text:
        return "not_loaded"
    if any(s in text for s in ("Fail connecting to server", "UNAVAILABLE", "failed to connect", "Connection refused",
                               "Socket closed", "server unavailable")):
        return "unreachable"
    return None


def milvus_collection_name(collection: str, space: str, shard: int, replica: int) -> str:
    """Unique on a shared server too: one collection per space per shard replica."""
    return f"{collection}__{space}__s{shard}_r{replica}"


class Shard:
    """Upsert, delete, get, count and search over one shard replica's collections."""

    def __init__(self, config: CollectionConfig, shard: int, replica: int, spec: BackendSpec,
                 batching: BatchSettings | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.shard = shard
        self.replica = replica
        self.spec = spec
        self.backend = MilvusBackend(spec)
        self.names = {s: milvus_collection_name(config.name, s, shard, replica) for s in config.spaces}
        self._open = False
        # New per process start: the sequencer sees a restart in it (ping, digest) and compares this replica with
        # the others right away. The digest is built by a full scan on first use, then kept up to date by writes.
        self.incarnation = uuid.uuid4().hex
        self._digest: ReplicaDigest | None = None
        self._digest_at = 0.0
        self._digest_lock = threading.Lock()   # held briefly: digest reads and updates
        self._build_lock = threading.Lock()    # held for a full scan
        self._pending: list[tuple] | None = None  # writes landing during a scan, applied to it at its end
        self._spoiled = False
        batching = batching or BatchSettings()
        # Concurrent searches from every caller share Milvus searches (shards.group_commit); None: each call alone.
        self.group_commit = GroupCommit(self._search_specs, max_vectors=batching.replica_max_vectors,
                                        isolatable=_isolatable) if batching.replica_enabled else None
        self._counts_lock = threading.Lock()
        self.milvus_searches = 0  # Milvus search calls made by search_many
        # Seals the growing segments milvus-lite leaves unsealed (shards.seal); a failed flush is logged, not raised.
        self.sealer = Sealer(config.spaces, seal_policy(spec.kind),
                             lambda space: self._call(self.backend.flush, self.names[space]), clock)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def create(self, load_timeout_s: float | None = None) -> None:
        for space in self.config.spaces.values():
            check_index_support(space.index, self.spec.kind, self.spec.gpu)
        spaces = list(self.config.spaces.items())
        if self.spec.kind == "server" and len(spaces) > 1:
            # Each new collection's load on the server waits ~3 s on queryCoord's ticks, not on work: all at once.
            with ThreadPoolExecutor(max_workers=len(spaces)) as pool:
                list(pool.map(lambda item: self.backend.ensure_collection(self.names[item[0]], item[1], load_timeout_s),
                              spaces))
        else:  # milvus-lite runs in this process: one at a time
            for space_name, space in spaces:
                self.backend.ensure_collection(self.names[space_name], space, load_timeout_s)
        self._open = True

    def _ensure_open(self, wait_s: float = RELOAD_WAIT_S) -> None:
        """A restarted actor, or one whose Milvus server restarted, reopens its persisted collections on first
        use (idempotent), waiting at most `wait_s` for them to load."""
        if not self._open:
            self._call(self.create, wait_s)

    def drop(self) -> None:
        for name in self.names.values():
            self.backend.drop_collection(name)
        self.backend.close()

    def close(self) -> None:
        """Release the Milvus connection (and milvus-lite's hold on this replica's directory)."""
        self.backend.close()

    def ping(self) -> dict[str, int]:
        """Alive and serving: on a server, every collection is loaded (reloaded after a Milvus restart)."""
        if self.spec.kind == "server":
            self._ensure_open(HEAL_RELOAD_WAIT_S)
            self._call(self._load_unloaded, HEAL_RELOAD_WAIT_S)
        return {"shard": self.shard, "replica": self.replica, "incarnation": self.incarnation}

    # -- digests (anti-entropy, verify) ------------------------------------------------------------------------
    def digest(self, rescan_after_s: float | None = None) -> dict[str, Any]:
        """This replica's bucket digests (shards.digest): {"incarnation", "age_s" (since the last full scan),
        "ids", "buckets"}. Built by a full scan on first use and again once older than `rescan_after_s` (0: now),
        which also catches rows changed behind prism's back. Writes are not held up by a scan: the ones that land
        meanwhile are recorded and applied to the new digest before it is installed."""
        self._ensure_open()
        with self._build_lock:  # one scan at a time
            with self._digest_lock:
                due = self._digest is None or (rescan_after_s is not None
                                               and time.monotonic() - self._digest_at >= rescan_after_s)
            while due:
                with self._digest_lock:
                    self._pending, self._spoiled = [], False
                started, fresh = time.monotonic(), None
                try:
                    fresh = self._scan_digest()
                finally:
                    with self._digest_lock:
                        pending, spoiled, self._pending = self._pending or [], self._spoiled, None
                        if not spoiled and fresh is not None:
                            for op in pending:
                                fresh.put(*op) if len(op) == 3 else fresh.remove(*op)
                            self._digest, self._digest_at = fresh, started
                due = spoiled  # a write failed part-way during the scan: it may or may not have seen it
            with self._digest_lock:
                d = self._digest
                return {"incarnation": self.incarnation, "age_s": round(time.monotonic() - self._digest_at, 3),
                        "ids": len(d.ids), "buckets": list(d.buckets)}

    def bucket_hashes(self, buckets: Sequence[int]) -> dict[str, int]:
        """Per-id hashes of the ids in `buckets` (the digest is built first if it is not yet)."""
        self.digest()
        with self._digest_lock:
            return self._digest.in_buckets(buckets)

    def _scan_digest(self) -> ReplicaDigest:
        d = ReplicaDigest()
        for space, name in self.names.items():
            for pid, vec, payload, meta in self._call(lambda n=name: list(self.backend.iter_rows(n))):
                d.put(space, pid, row_hash(space, pid, vec, payload, meta))
        return d

    def _digest_written(self, per_space: dict[str, list[dict[str, Any]]]) -> None:
        ops = [(space, r[ID_FIELD], row_hash(space, r[ID_FIELD], r[VECTOR_FIELD], r[PAYLOAD_FIELD], r[META_FIELD]))
               for space, rows in per_space.items() for r in rows]
        self._digest_apply(ops)

    def _digest_deleted(self, ids: Sequence[str]) -> None:
        self._digest_apply([(space, pid) for space in self.names for pid in ids])

    def _digest_apply(self, ops: list[tuple]) -> None:
        """(space, id, hash) puts and (space, id) removes, onto the digest and onto a scan in progress."""
        with self._digest_lock:
            if self._pending is not None:
                self._pending.extend(ops)
            if self._digest is not None:
                for op in ops:
                    self._digest.put(*op) if len(op) == 3 else self._digest.remove(*op)

    def _digest_invalid(self) -> None:
        with self._digest_lock:
            self._digest = None
            self._spoiled = self._pending is not None  # a scan in progress may or may not have seen it

    def node(self) -> str | None:
        """The Ray node this replica runs on: None here (in this process); the Ray actor says its node."""
        return None

    def _load_unloaded(self, wait_s: float = RELOAD_WAIT_S) -> None:
        for name in self.names.values():
            state = str(self.backend.client.get_load_state(name).get("state", ""))
            if "NotLoad" in state or "Loaded" not in state:
                self.backend.client.load_collection(name, timeout=wait_s)

    def describe_index(self, space: str) -> dict[str, Any]:
        return self.backend.describe_index(self._name(space))

    # -- writes ------------------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[PointRow], wait: bool = True) -> int:
        """Each space stores the points carrying its vector, and no longer holds those that carry none there (an
        upsert replaces the whole point: a row left in a space from an earlier version would keep that version's
        payload, and no copy of the point, which has one payload, could reproduce it); `wait`: return once every
        search here sees them."""
        self._ensure_open()
        per_space: dict[str, list[dict[str, Any]]] = {s: [] for s in self.config.spaces}
        without: dict[str, list[str]] = {s: [] for s in self.config.spaces}
        for p in points:
            for space, vec in p.vectors.items():
                if space not in per_space:
                    raise SpaceNotFound(f"unknown space {space!r} for point {p.id!r}", field="vectors")
                per_space[space].append({ID_FIELD: p.id, VECTOR_FIELD: vec, PAYLOAD_FIELD: p.payload,
                                         META_FIELD: p.meta})
            for space in self.config.spaces:
                if space not in p.vectors:
                    without[space].append(p.id)
        written = []
        try:
            for space, rows in per_space.items():
                if rows:
                    self._write_call(self.backend.upsert, self.names[space], rows)
                    written.append(self.names[space])
                    self.sealer.wrote(space, len(rows))
            for space, ids in without.items():
                if ids:
                    self._write_call(self.backend.delete, self.names[space], ids)
                    written.append(self.names[space])
                    self.sealer.wrote(space, len(ids))
        except BaseException:
            self._digest_invalid()  # some spaces may hold it: the next digest is a full scan
            raise
        self._digest_written(per_space)
        self._digest_apply([(space, pid) for space, ids in without.items() for pid in ids])
        if wait:
            self._wait_visible(list(dict.fromkeys(written)))
        self.sealer.seal(self.config.spaces)
        return len(points)

    def delete(self, ids: Sequence[str], wait: bool = True) -> int:
        """Delete from every space; returns how many of `ids` were visible here. `wait` as for upsert."""
        self._ensure_open()
        found = set()
        try:
            for space, name in self.names.items():
                found.update(self._call(self.backend.get, name, list(ids)).keys())
                self._write_call(self.backend.delete, name, list(ids))
                self.sealer.wrote(space, len(ids))
        except BaseException:
            self._digest_invalid()
            raise
        self._digest_deleted(ids)
        if wait and ids:
            self._wait_visible(list(self.names.values()))
        self.sealer.seal(self.names)
        return len(found)

    def wait_visible(self) -> None:
        """Return once every write made so far (waited for or not) is visible to every search here."""
        self._ensure_open()
        self._wait_visible(list(self.names.values()))

    def _wait_visible(self, names: list[str]) -> None:
        """A Strong read of each written collection, concurrently: once it returns, the replica's serviceable time
        has passed the write, so every later search sees it, bounded ones included. The writer pays the
        time-tick wait; readers never do."""
        if len(names) <= 1:
            for name in names:
                self._call(self.backend.wait_visible, name)
            return
        with ThreadPoolExecutor(len(names)) as pool:
            for f in [pool.submit(self._call, self.backend.wait_visible, n) for n in names]:
                f.result()

    # -- reads -------------------------------------------------------------------------------------------------
    def search(
        self,
        space: str,
        vectors: Sequence[Sequence[float]],
        limit: int,
        expr: str | None = None,
        params: dict[str, Any] | None = None,
        consistency: str = "bounded",
        with_payload: bool = False,
    ) -> list[list[ScoredId]]:
        self._ensure_open()
        self.sealer.seal([space])
        return self._call(
            self.backend.search, self._name(space), self.config.spaces[space], vectors, limit, expr, params,
            consistency, with_payload,
        )

    def search_many(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        """Several single-vector searches in one call; compatible ones (`shards.group_commit.plan_groups`) run as
        ONE Milvus search with nq > 1, together with those of concurrent calls from other callers (group commit)."""
        self.sealer.seal([s.space for s in specs])
        if self.group_commit is None:
            return self._search_specs(specs)
        return self.group_commit.submit(specs)

    def search_counts(self) -> dict[str, int]:
        """search_many calls answered, batches run (group commit; 0 when off) and Milvus searches made."""
        gc = self.group_commit
        return {"requests": gc.requests if gc else 0, "batches": gc.batches if gc else 0,
                "milvus_searches": self.milvus_searches}

    def _search_specs(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        """One Milvus search per group of compatible specs, each spec's hits cut to its own limit."""
        self._ensure_open()
        out: list[list[ScoredId]] = [[] for _ in specs]
        for group in plan_groups(specs, self._resolved_params):
            s = specs[group.indexes[0]]
            with self._counts_lock:
                self.milvus_searches += 1
            hits = self._call(self.backend.search, self._name(s.space), self.config.spaces[s.space],
                              [specs[i].vector for i in group.indexes], group.limit, s.expr, group.params,
                              s.consistency, s.with_payload)
            split_hits(specs, group, hits, out)
        return out

    def _resolved_params(self, spec: SearchSpec) -> dict[str, Any]:
        """The search parameters Milvus gets for `spec` alone (defaults for its index at its limit, its overrides)."""
        self._name(spec.space)  # an unknown space is SpaceNotFound, not a KeyError
        return search_params(self.config.spaces[spec.space].index, spec.limit, spec.params)

    def get(self, ids: Sequence[str], with_vectors: Sequence[str] = ()) -> dict[str, StoredPoint]:
        """Payload (and vectors of the named spaces) of the ids held here."""
        self._ensure_open()
        out: dict[str, StoredPoint] = {}
        missing = list(ids)
        for space, name in self.names.items():
            if not missing:
                break
            rows = self._call(self.backend.get, name, missing)
            for pid, row in rows.items():
                out[pid] = StoredPoint(payload=row["payload"])
            missing = [i for i in missing if i not in out]
        for space in with_vectors:
            rows = self._call(self.backend.get, self._name(space), list(out), True)
            for pid, row in rows.items():
                out[pid].vectors[space] = row["vector"]
        return out

    def wait_indexed(self, timeout_s: float = 1800.0) -> float:
        """Flush, then wait until every space's index covers all rows; returns seconds waited."""
        t0, covered = time.monotonic(), self.sealer.pending()
        for name in self.names.values():
            self._call(self.backend.flush, name)
        self.sealer.flushed(covered)
        while any(self._call(self.backend.pending_index_rows, n) for n in self.names.values()):
            if time.monotonic() - t0 > timeout_s:
                raise BackendError(f"shard {self.shard} replica {self.replica}: index not built in {timeout_s:.0f}s")
            time.sleep(1.0)
        return time.monotonic() - t0

    def ids(self) -> list[str]:
        """Every point id held here, in any space."""
        self._ensure_open()
        out: set[str] = set()
        for name in self.names.values():
            out.update(self._call(self.backend.ids, name))
        return sorted(out)

    def scan(self, after: str, limit: int, expr: str | None = None) -> list[str]:
        """The first `limit` ids above `after` held here in any space (each space's first `limit`, merged)."""
        self._ensure_open()
        out: set[str] = set()
        for name in self.names.values():
            out.update(self._call(self.backend.scan, name, after, limit, expr))
        return sorted(out)[:limit]

    def export(self, ids: Sequence[str]) -> list[PointRow]:
        """Whole stored points, for copying to another shard."""
        self._ensure_open()
        points: dict[str, PointRow] = {}
        for space, name in self.names.items():
            for pid, row in self._call(self.backend.rows, name, list(ids)).items():
                p = points.setdefault(pid, PointRow(id=pid, payload=row["payload"], meta=row["meta"]))
                p.vectors[space] = row["vector"]
        return list(points.values())

    def export_page(self, after: str, limit: int = EXPORT_PAGE) -> list[PointRow]:
        """The first `limit` whole points above `after` held here in any space. Each space's first `limit` rows
        cover the first `limit` ids of the union: a space that returned `limit` rows holds `limit` ids up to its
        last one, so the union's `limit`-th id is no higher, and every space's row of a kept id was returned."""
        self._ensure_open()
        points: dict[str, PointRow] = {}
        for space, name in self.names.items():
            for pid, vec, payload, meta in self._call(self.backend.rows_after, name, after, limit):
                points.setdefault(pid, PointRow(id=pid, payload=payload, meta=meta)).vectors[space] = vec
        return [points[pid] for pid in sorted(points)[:limit]]

    def count(self) -> dict[str, int]:
        self._ensure_open()
        return {space: self._call(self.backend.count, name) for space, name in self.names.items()}

    # -- helpers -----------------------------------------------------------------------------------------------
    def _name(self, space: str) -> str:
        if space not in self.names:
            raise SpaceNotFound(f"unknown space {space!r}; collection {self.config.name!r} has {sorted(self.names)}")
        return self.names[space]

    def _write_call(self, fn, *args):
        """`_call` for a write: an error from a Milvus that answered (not a fault of its state) is WriteRefused."""
        try:
            return self._call(fn, *args)
        except BackendError as exc:
            cause = exc.__cause__
            if type(exc) is BackendError and cause is not None and not isinstance(cause, PrismError) \
                    and milvus_fault(cause) is None:
                raise WriteRefused(exc.message) from cause
            raise

    def _call(self, fn, *args):
        """`fn(*args)` against Milvus. A server that is unreachable is retried (RETRY_PAUSES_S); one that restarted
        without this replica's collections loaded gets them reloaded, then the call is retried. Faults become
        BackendError naming the replica and the cause."""
        pauses = list(RETRY_PAUSES_S)
        while True:
            try:
                return fn(*args)
            except PrismError:
                raise
            except Exception as exc:  # noqa: BLE001 - Milvus errors become typed prism errors here
                fault = milvus_fault(exc)
                if fault == "not_loaded" and pauses:
                    pauses.pop()
                    try:
                        self._load_unloaded()
                    except Exception as again:  # noqa: BLE001
                        raise BackendError(f"shard {self.shard} replica {self.replica}: reloading its collections "
                                           f"after a Milvus restart failed: {again}") from again
                    continue
                if fault == "loading":
                    self._open = False
                    raise BackendError(f"shard {self.shard} replica {self.replica}: Milvus at {self.spec.uri} is "
                                       "still loading this replica's collections (it restarted)") from exc
                if fault == "unreachable":
                    self._open = False  # reconnected later: reload first (a restarted server loads nothing)
                    if pauses:
                        time.sleep(pauses.pop(0))  # a backoff between real retries, not a synchronisation
                        continue
                    raise BackendError(f"shard {self.shard} replica {self.replica}: Milvus at {self.spec.uri} is "
                                       f"unreachable ({1 + len(RETRY_PAUSES_S)} tries): {exc}") from exc
                raise BackendError(f"shard {self.shard} replica {self.replica}: {exc}") from exc


def _isolatable(exc: BaseException) -> bool:
    """A failed batch may be one call's fault unless Milvus itself was down or still loading (asking it again per
    call would only multiply the retries)."""
    cause = exc.__cause__
    return not (isinstance(exc, BackendError) and cause is not None and not isinstance(cause, PrismError)
                and milvus_fault(cause) is not None)
