"""What the coordinator knows about one shard's replicas (`ReplicaSet`, pure, clock injected): their ordering,
health, applied sequence numbers, write quorum and agreement (anti-entropy's verdicts).

A replica is *readable* when it has applied every acknowledged write of its shard (applied_seq >= committed; a
write still in flight, or one that missed its quorum, does not make the others unreadable) and
*healthy* unless it failed `fail_threshold` calls in a row (or its actor died). Reads go to healthy readable
replicas that agree with the others, spread over them by load (`read_replicas="spread"`: the policy in
`router.replication.selection`) or in a stable ring order (`"sticky"`: caches stay warm, a replica whose latency
EWMA is far above the best one demoted); a replica not yet compared since it restarted, or known to differ from the
others, comes after them, and a dead-but-readable replica is tried only as a last resort. Writes go to the healthy replicas that have
applied every write issued so far, and are acknowledged at the write quorum.
"""
from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.errors import ConfigError
from cluster.ring import HashRing
from router.replication.selection import Load, check_policy, spread

HEDGE_SAMPLES = 64      # latencies kept per replica for its p95
HEDGE_MIN_SAMPLES = 10  # no hedging before a replica's p95 means something
FAIL_THRESHOLD = 3
PROBE_INTERVAL_S = 1.0
EWMA_ALPHA = 0.2
SLOW_FACTOR = 4.0
# A latency estimate no read has refreshed for this long is forgotten: the replica counts as unknown (as good as
# the best known) and is tried again; its next read starts a fresh EWMA. Without it a replica slow once (a GC pause,
# a compaction) was never read again by choice: reads avoid it, so nothing ever lowered its EWMA.
EWMA_FORGET_S = 5.0


def quorum(setting: str | int, replicas: int) -> int:
    """How many replica acks a write needs: 'all', 'majority' (floor(n/2)+1) or an integer in 1..n."""
    if setting == "all":
        return replicas
    if setting == "majority":
        return replicas // 2 + 1
    if isinstance(setting, bool) or not isinstance(setting, int) or not 1 <= setting <= replicas:
        raise ConfigError(f"write quorum must be 'all', 'majority' or 1..{replicas}, got {setting!r}",
                          field="write_quorum")
    return setting


@dataclass
class ReplicaState:
    replica: int
    applied_seq: int = 0
    failures: int = 0
    healthy: bool = True
    ewma_ms: float | None = None
    ewma_at: float | None = None  # when a read last fed ewma_ms (ReplicaSet.clock)
    next_probe_at: float = 0.0
    last_error: str = ""
    faults: int = 0           # failures seen, ever (last_error clears on success; these stay for status)
    last_fault: str = ""
    last_fault_at: float | None = None
    samples: deque = field(default_factory=lambda: deque(maxlen=HEDGE_SAMPLES))  # recent read latencies, ms
    # Anti-entropy's verdict: "" (agrees, or not yet compared since the sequencer started), "verifying" (it
    # restarted since it was last compared: it may have lost writes), "diverged" (known to differ, being repaired).
    agreement: str = ""
    checked_at: float | None = None   # wall-clock time of the last comparison that found it equal
    incarnation: str | int | None = None
    outstanding: int = 0      # this ingress's reads sent to it and not yet answered (queued in its batch too)

    def state(self, committed: int, latest: int | None = None) -> str:
        """`latest`: the most any replica of the shard has applied (a replica below it lacks a write that
        another applied: one that missed its quorum, still rolling forward)."""
        if not self.healthy:
            return "dead"
        if self.applied_seq < committed:
            return "stale"
        if latest is not None and self.applied_seq < latest:
            return "behind"
        return self.agreement or "live"


@dataclass
class ReplicaSet:
    """The replicas of one shard and what the coordinator knows about them."""

    shard: int
    replicas: int
    key: str = ""
    clock: Callable[[], float] = time.monotonic
    fail_threshold: int = FAIL_THRESHOLD
    probe_interval_s: float = PROBE_INTERVAL_S
    seq: int = 0          # last write issued (in the operation log)
    committed: int = 0    # last write acknowledged at quorum
    states: list[ReplicaState] = field(default_factory=list)
    preference: list[int] = field(default_factory=list)
    read_replicas: str = "spread"   # router.replication.selection: "spread" over the replicas by load, "sticky"
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        check_policy(self.read_replicas)
        self.states = [ReplicaState(r) for r in range(self.replicas)]
        # A stable per-shard preference from the ring: every coordinator sends this shard's reads to the same
        # first replica, so its caches stay warm.
        self.preference = [int(r) for r in HashRing(range(self.replicas)).preference(self.key or f"shard-{self.shard}")]

    # -- reads -------------------------------------------------------------------------------------------------
    def read_order(self, prefer: int | None = None) -> list[int]:
        """Healthy readable replicas (spread: the one chosen by load first; sticky: ring order, slow ones demoted;
        unverified ones after), then dead-but-readable ones. `prefer`: a replica chosen earlier (a batch formed
        for it) goes first while it is still among the healthy agreeing ones."""
        readable = [r for r in self.preference if self.states[r].applied_seq >= self.committed]
        healthy = [r for r in readable if self.states[r].healthy]
        best = min((e for r in healthy if (e := self.ewma(r)) is not None), default=None)

        def slow(r: int) -> bool:
            e = self.ewma(r)
            return best is not None and e is not None and e > SLOW_FACTOR * max(best, 1.0)

        ordered = [r for r in healthy if not slow(r)] + [r for r in healthy if slow(r)]
        # A replica that may differ (restarted, not yet compared), is known to differ, or lacks a write another
        # applied (below quorum, being replayed) answers only when no agreeing one can; a dead one last.
        latest = self.latest()
        agreeing = [r for r in ordered if self.agrees(r, latest)]
        if self.read_replicas == "spread":
            if prefer in agreeing:
                agreeing = [prefer] + [r for r in agreeing if r != prefer]
            else:
                agreeing = spread(agreeing, [self.load(r) for r in agreeing], self.rng)
        return agreeing + [r for r in ordered if r not in agreeing] + \
            [r for r in readable if not self.states[r].healthy]

    def agrees(self, replica: int, latest: int | None = None) -> bool:
        """Healthy, holding every write any replica applied, and not restarted-unverified or diverged: a replica
        whose answer may be served while another could answer too (reads by choice, hedges)."""
        st = self.states[replica]
        return st.healthy and not st.agreement and st.applied_seq >= max(
            self.committed, self.latest() if latest is None else latest)

    def ewma(self, replica: int) -> float | None:
        """The replica's latency EWMA (ms), or None when unknown or older than EWMA_FORGET_S."""
        st = self.states[replica]
        if st.ewma_at is not None and self.clock() - st.ewma_at > EWMA_FORGET_S:
            return None
        return st.ewma_ms

    def load(self, replica: int) -> Load:
        return Load(self.states[replica].outstanding, self.ewma(replica))

    def latest(self) -> int:
        """The most any replica has applied. Applied seqs are recorded once a write has ended on every target,
        so a replica below it lacks a write another one holds, not one in flight."""
        return max(st.applied_seq for st in self.states)

    # -- writes ------------------------------------------------------------------------------------------------
    def write_targets(self) -> list[int]:
        """Replicas that can apply the next write in order: caught up and healthy."""
        return [r for r in self.preference if self.states[r].applied_seq >= self.seq and self.states[r].healthy]

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def abandon(self, seq: int) -> None:
        """The write `seq` (the last one issued) was refused as a bad request: it never happened."""
        if seq != self.seq:
            raise RuntimeError(f"only the last write can be abandoned (last {self.seq}, got {seq})")
        self.seq -= 1
        for st in self.states:
            st.applied_seq = min(st.applied_seq, self.seq)

    def commit(self, seq: int) -> None:
        """The write `seq` reached its quorum: replicas without it are stale from now on."""
        self.committed = max(self.committed, seq)

    def applied(self, replica: int, seq: int) -> None:
        st = self.states[replica]
        st.applied_seq = max(st.applied_seq, seq)

    # -- health ------------------------------------------------------------------------------------------------
    def on_success(self, replica: int, latency_s: float | None = None) -> None:
        st = self.states[replica]
        st.failures = 0
        st.healthy = True
        st.last_error = ""
        if latency_s is not None:
            self.observe_latency(replica, latency_s)

    def observe_latency(self, replica: int, latency_s: float) -> None:
        """A read's latency (or a lower bound of it, for a hedged read that lost): feeds the EWMA and the p95."""
        st = self.states[replica]
        ms = latency_s * 1000
        if self.ewma(replica) is None:  # unknown or forgotten: start afresh (old samples say nothing of now)
            st.ewma_ms = None
            st.samples.clear()
        st.ewma_ms = ms if st.ewma_ms is None else (1 - EWMA_ALPHA) * st.ewma_ms + EWMA_ALPHA * ms
        st.ewma_at = self.clock()
        st.samples.append(ms)

    def hedge_after_s(self, replica: int) -> float | None:
        """The replica's observed p95 in seconds: past it, a read is worth sending to another replica too.
        None until enough reads were seen."""
        samples = sorted(self.states[replica].samples)
        if len(samples) < HEDGE_MIN_SAMPLES:
            return None
        return samples[min(len(samples) - 1, int(0.95 * len(samples)))] / 1000

    def on_failure(self, replica: int, reason: str, fatal: bool = False) -> None:
        """`fatal` (the actor is gone) marks it dead at once; otherwise after `fail_threshold` in a row."""
        st = self.states[replica]
        st.failures += 1
        st.last_error = reason
        self._fault(st, reason)
        if fatal or st.failures >= self.fail_threshold:
            st.healthy = False
            st.next_probe_at = self.clock() + self.probe_interval_s

    def needs_healing(self) -> list[int]:
        """Replicas that are dead (probe due) or behind on writes."""
        now = self.clock()
        out = []
        for st in self.states:
            if not st.healthy and now < st.next_probe_at:
                continue
            if not st.healthy or st.applied_seq < self.seq:
                out.append(st.replica)
        return out

    def _fault(self, st: ReplicaState, reason: str) -> None:
        st.faults += 1
        st.last_fault, st.last_fault_at = reason, self.clock()

    def probe_now(self) -> None:
        """Make every dead replica due for a probe now (an operation that cannot go on without one: a snapshot of a
        shard whose replicas are all behind), instead of at its backoff's end."""
        now = self.clock()
        for st in self.states:
            if not st.healthy:
                st.next_probe_at = min(st.next_probe_at, now)

    def probe_failed(self, replica: int, reason: str) -> None:
        st = self.states[replica]
        st.healthy = False
        st.last_error = reason
        self._fault(st, reason)
        st.next_probe_at = self.clock() + self.probe_interval_s

    def saw_incarnation(self, replica: int, incarnation: str | int | None, verify: bool = True) -> bool:
        """A replica answered with its process incarnation; a new one (it restarted) makes it `verifying` until
        anti-entropy has compared it with the others (`verify`: anti-entropy runs here; else nothing would ever
        clear it). Returns whether it restarted."""
        st = self.states[replica]
        if incarnation is None or incarnation == st.incarnation:
            return False
        restarted = st.incarnation is not None
        st.incarnation = incarnation
        if restarted and verify and st.agreement != "diverged":
            st.agreement = "verifying"
        return restarted

    def replica_report(self, wall: Callable[[], float] = time.time) -> list[dict]:
        """Per replica: state, sequence numbers, lag (writes issued it has not applied), the current error and
        the last fault ever seen (with its age in seconds), which outlives the recovery, and when anti-entropy
        last found it equal to the others (`digest_s_ago`)."""
        now, wall_now = self.clock(), wall()
        latest = self.latest()
        return [{"replica": st.replica, "state": st.state(self.committed, latest), "applied_seq": st.applied_seq,
                 "agreement": st.agreement or "agrees",
                 "digest_s_ago": None if st.checked_at is None else round(max(0.0, wall_now - st.checked_at), 1),
                 "committed_seq": self.committed, "lag": max(0, self.seq - st.applied_seq),
                 "ewma_ms": None if st.ewma_ms is None else round(st.ewma_ms, 2),
                 "last_error": st.last_error, "faults": st.faults, "last_fault": st.last_fault,
                 "last_fault_s_ago": None if st.last_fault_at is None else round(now - st.last_fault_at, 1)}
                for st in self.states]

