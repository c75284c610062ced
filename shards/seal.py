"""When a shard replica seals (flushes) a space's growing segment: pure bookkeeping and policy, no Milvus call.

milvus-lite never seals a growing segment on its own, and searches the rows in one by brute force until a flush
seals and indexes them (measured on this 2-core machine, 64-d HNSW, one shard: 10,000 unsealed rows 81-171 ms per
search, 25-33 ms once flushed; a flush of 1,000 rows 40-120 ms, of 10,000 rows 290-370 ms, an empty one 2-26 ms).
So on lite a space is sealed (a) by the writer whose write brings the rows written since its last flush to
SEAL_ROWS_LITE, and (b) by the first search after writes to it have been quiet for SEAL_IDLE_S: one read pays one
flush, every later read is fast. Writers pay the index builds (10,000 rows through Shard.upsert, 1,000 a call:
0.6-0.75 s unsealed, 1.7-2.0 s with two seals) and readers get indexed search (median 75-470 ms per search before,
5.6-8.4 ms once quiet; the machine was loaded by other benchmarks, hence the spread).

The Milvus 2.3 server seals on its own (segment size, idle time) and searches its growing segments with an interim
index: measured the same way, 10,000 unsealed rows 2.4-3.6 ms per search, 2.1-3.1 ms after a flush; and a flush
costs 2.5 s whatever its size (it waits on the time tick; an empty one 0.5 s). On the server a seal would cost
seconds and buy nothing, so it has no policy (`seal_policy("server")` is None).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Rows written to a lite space (upserted or deleted) since its last flush that make the writer seal it. Measured on
# lite (64-d HNSW, over 10,240 sealed rows, a loaded 2-core machine, round-robin medians): 1,024 unsealed rows add
# 12 ms to every search, 2,048 45 ms, 4,096 117 ms, 8,192 246 ms; a steady writer leaves readers half the threshold
# on average. The flushes' total cost hardly depends on it (20,480 rows sealed every 2,048 rows: 3.3 s of flushes,
# every 8,192: 4.7 s, at once: 3.9-4.5 s), nor did the segments it makes slow searches (40 segments of 512 rows
# searched no slower than one of 20,480). 4,096: half 8,192's cost to readers, a flush per 4,096 rows to writers.
SEAL_ROWS_LITE = 4_096
# Quiet time after which the next search seals what is left: short enough that a load followed by queries is
# indexed almost at once, long enough that a writer sending a batch every second or so is not flushed per batch.
SEAL_IDLE_S = 2.0


@dataclass(frozen=True)
class SealPolicy:
    seal_rows: int = SEAL_ROWS_LITE
    idle_s: float = SEAL_IDLE_S


def seal_policy(kind: str) -> SealPolicy | None:
    """The policy for a backend kind ("lite" or "server"); None: never seal (see the module docstring)."""
    return SealPolicy() if kind == "lite" else None


@dataclass
class SpaceWrites:
    """One space's writes since its last flush."""

    rows: int = 0             # rows upserted or deleted since the last flush began
    last_write: float = 0.0   # clock time of the last write
    sealing: bool = False     # a flush of it is running (one caller seals; the others go on unblocked)
    not_before: float = 0.0   # after a failed flush: no new try before this time


def due(spaces: Mapping[str, SpaceWrites], now: float, policy: SealPolicy) -> list[str]:
    """The spaces to seal now: those with unsealed rows that reached `policy.seal_rows`, or whose writes have been
    quiet for `policy.idle_s`; never one being sealed, nor one whose last flush failed less than idle_s ago."""
    return [name for name, w in spaces.items()
            if w.rows > 0 and not w.sealing and now >= w.not_before
            and (w.rows >= policy.seal_rows or now - w.last_write >= policy.idle_s)]


class Sealer:
    """A shard replica's per-space write counts and the seals they call for. Thread-safe; its lock is held only
    for bookkeeping, never during a flush. With `policy` None it records nothing and never seals."""

    def __init__(self, spaces: Iterable[str], policy: SealPolicy | None, flush: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.flush = flush  # seals one space (a Milvus flush of its collection)
        self.clock = clock
        self.spaces = {s: SpaceWrites() for s in spaces}
        self._lock = threading.Lock()

    def wrote(self, space: str, rows: int) -> None:
        if self.policy is None or rows <= 0:
            return
        with self._lock:
            w = self.spaces[space]
            w.rows += rows
            w.last_write = self.clock()

    def seal(self, spaces: Iterable[str]) -> list[str]:
        """Flush those of `spaces` that are due, each by this caller alone (unknown names are skipped); returns the
        ones sealed. A failed flush is logged and left for a later trigger (idle_s on); it never raises."""
        if self.policy is None:
            return []
        with self._lock:
            names = due({s: self.spaces[s] for s in spaces if s in self.spaces}, self.clock(), self.policy)
            taken = {}
            for s in names:
                self.spaces[s].sealing, taken[s] = True, self.spaces[s].rows
        sealed = []
        for s in names:
            try:
                self.flush(s)
            except Exception as exc:  # noqa: BLE001 - a seal is an optimisation: the write or search goes on
                log.warning("sealing space %r failed (%d unsealed rows; tried again later): %s", s, taken[s], exc)
                with self._lock:
                    w = self.spaces[s]
                    w.sealing, w.not_before = False, self.clock() + self.policy.idle_s
                continue
            self.flushed({s: taken[s]})
            sealed.append(s)
        return sealed

    def pending(self) -> dict[str, int]:
        """Unsealed rows per space now: what a flush started now covers (`flushed` takes it back)."""
        with self._lock:
            return {s: w.rows for s, w in self.spaces.items()}

    def flushed(self, covered: Mapping[str, int]) -> None:
        """Flushes covering `covered` rows per space succeeded; rows written while they ran stay counted."""
        with self._lock:
            for s, rows in covered.items():
                w = self.spaces[s]
                w.rows, w.sealing, w.not_before = max(0, w.rows - rows), False, 0.0
