"""How a shard's reads reach its replicas: the replica chosen by `ReplicaSet.read_order` (spread by load or sticky,
`router.replication.selection`), failover within the call, hedging past a replica's p95, and searches batched with
concurrent queries. A mixin of `router.replication.replicas.ReplicatedShard`, kept apart by job.

Every read counts as outstanding on the replica it waits for until it ends, however it ends (`finally`), so an
error or a cancelled hedge never leaves load behind; latency feeds the replica's EWMA (`ReplicaSet.on_success`).
Batches form per chosen replica: a query picks its replica first and joins that replica's coalescer, so one batch
goes to one replica (failing over as a whole) and replicas serve batches side by side.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from cluster.errors import InvalidRequest, ShardUnavailable, SpaceNotFound, describe
from router.filters.plan import adapt_params
from router.replication.batching import Coalescer
from shards.api import ScoredId, SearchSpec, ShardApi

T = TypeVar("T")
# Errors that describe the request, not the replica: they propagate instead of triggering failover.
REQUEST_ERRORS = (InvalidRequest, SpaceNotFound)
SCAN_TIMEOUT_S = 120.0  # a whole-shard read of maintenance (`read(scan=True)`): every id, a page of a move


class Reads:
    """Reads over `self.clients`, `self.state` (a ReplicaSet), `self.timeout_s`, `self.hedge`, `self.batching`,
    `self.observe` and `self._coalescers` (per event loop: replica -> Coalescer)."""

    async def search(self, specs: Sequence[SearchSpec], budget_s: float | None = None) -> list[list[ScoredId]]:
        """`specs` on one replica (failover as for any read); batched with concurrent queries when enabled.
        `budget_s`: how long this caller waits at most (ShardUnavailable with cause "timeout" after)."""
        b = self.batching
        if b is None or not b.enabled:
            call = self.read(lambda c: c.search_many(specs), timed=True, timeout_s=budget_s)
        else:
            call = self._batched(specs)
        if budget_s is None:
            return await call
        try:
            return await asyncio.wait_for(call, budget_s)
        except asyncio.TimeoutError:
            raise ShardUnavailable(f"shard {self.shard}: no answer within the budget ({budget_s * 1000:.0f} ms)",
                                   shards=[self.shard], cause="timeout") from None

    async def _batched(self, specs: Sequence[SearchSpec]) -> list[list[ScoredId]]:
        """`specs` through the coalescer of the replica chosen for them: outstanding there until answered."""
        order = self.state.read_order()
        if not order:
            return await self.read(lambda c: c.search_many(specs))  # raises: no replica can answer
        r, b = order[0], self.batching
        per_replica = self._coalescers.setdefault(asyncio.get_running_loop(), {})
        co = per_replica.get(r)
        if co is None:
            # Counted here per query, not per batch call: the replica's load is the queries waiting on it.
            co = per_replica[r] = Coalescer(
                lambda flat: self.read(lambda c: c.search_many(flat), timed=True, prefer=r, counted=False),
                max_specs=b.max_specs, window_s=b.window_ms / 1000)
        st = self.state.states[r]
        st.outstanding += 1
        try:
            return await co.submit(specs)
        finally:
            st.outstanding -= 1

    def coalescers(self) -> list[Coalescer]:
        """Every coalescer of this shard (all event loops, all replicas)."""
        return [co for per_replica in self._coalescers.values() for co in per_replica.values()]

    def within(self, specs: list[SearchSpec], budget_s: float | None, index_types: dict[str, str],
               depth: dict[str, int] | None = None) -> list[SearchSpec]:
        """`specs` with ef/nprobe chosen for this shard from the budget and its preferred replica's latency, `depth`
        times deeper per space where a routed placement gathers a query's neighbours (router.filters.plan)."""
        order = self.state.read_order()
        observed = self.state.ewma(order[0]) if order else None
        budget_ms = None if budget_s is None else budget_s * 1000
        out = []
        for s in specs:
            p = adapt_params(index_types[s.space], s.limit, budget_ms, observed, s.params, (depth or {}).get(s.space, 1))
            out.append(s if p is None else dataclasses.replace(s, params=p))
        return out

    async def _attempt(self, r: int, op: Callable[[ShardApi], Awaitable[T]], limit: float, counted: bool) -> T:
        """`op` on replica `r` within `limit`; outstanding there meanwhile (`counted`), whatever the outcome."""
        st = self.state.states[r]
        if counted:
            st.outstanding += 1
        try:
            return await asyncio.wait_for(op(self.clients[r]), limit)
        finally:
            if counted:
                st.outstanding -= 1

    async def read(self, op: Callable[[ShardApi], Awaitable[T]], *, timed: bool = False,
                   timeout_s: float | None = None, prefer: int | None = None, counted: bool = True,
                   scan: bool = False) -> T:
        """`op` on the replicas in read order, failing over within this call. `timed` feeds `observe`; `prefer`:
        the replica chosen earlier (a batch formed for it); `counted=False`: the caller counts it outstanding;
        `scan`: a whole-shard read of maintenance (every id, a page of exports for a move), given SCAN_TIMEOUT_S
        rather than a query's timeout: a large shard on a loaded server is slow, not down."""
        rs = self.state
        order = rs.read_order(prefer)
        if not order:
            raise ShardUnavailable(f"shard {self.shard} unavailable: no replica has caught up with its writes",
                                   shards=[self.shard])
        limit = max(self.timeout_s, SCAN_TIMEOUT_S) if scan else self.timeout_s
        limit = limit if timeout_s is None else min(timeout_s, limit)
        reasons, causes = [], set()
        # A hedge goes only to a replica that could have been chosen: never to one behind, unverified, diverged
        # or dead (they answer only once every agreeing replica has failed, in the loop below).
        if self.hedge and len(order) > 1 and rs.agrees(order[1]) and (after := rs.hedge_after_s(order[0])) is not None:
            answered, got = await self._hedged(op, order, after, limit, timed, reasons, causes, counted)
            if answered:
                return got
            order = got  # both hedged replicas failed: the rest, in order
        for r in order:
            t0 = time.perf_counter()
            try:
                result = await self._attempt(r, op, limit, counted)
            except REQUEST_ERRORS:
                raise
            except asyncio.TimeoutError:
                reason = f"replica {r}: no answer within {limit:g}s"
                rs.on_failure(r, reason)
                causes.add("timeout")
            except ShardUnavailable as exc:  # the actor is gone: dead at once
                reason = f"replica {r}: {exc.message}"
                rs.on_failure(r, reason, fatal=True)
                causes.add("unavailable")
            except Exception as exc:  # noqa: BLE001 - any replica fault means: try the next one
                reason = f"replica {r}: {describe(exc)}"
                rs.on_failure(r, reason)
                causes.add("error")
            else:
                elapsed = time.perf_counter() - t0
                rs.on_success(r, elapsed)
                if timed and self.observe is not None:
                    self.observe(self.shard, elapsed)
                return result
            reasons.append(reason)
        cause = causes.pop() if len(causes) == 1 else "error"
        raise ShardUnavailable(f"shard {self.shard} unavailable: " + "; ".join(reasons), shards=[self.shard],
                               cause=cause)

    async def _hedged(self, op: Callable[[ShardApi], Awaitable[T]], order: list[int], after: float, limit: float,
                      timed: bool, reasons: list[str], causes: set[str], counted: bool = True) -> tuple[bool, Any]:
        """Read from the first replica; if it has not answered within its p95, from the next one as well: the
        first answer wins and the other call is cancelled. Returns (True, answer) or (False, replicas left to try)."""
        rs, t0 = self.state, time.perf_counter()
        running = {asyncio.ensure_future(self._attempt(order[0], op, limit, counted)): order[0]}
        pending = set(running)
        try:  # from here: a caller cancelled (or timed out) while waiting leaves no attempt running, nor its load
            done, _ = await asyncio.wait(running, timeout=after)
            if not done:
                self.hedged += 1
                running[asyncio.ensure_future(self._attempt(order[1], op, limit, counted))] = order[1]
            pending = set(running)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    r, exc = running[task], task.exception()
                    if exc is None:
                        for slow in [running[t] for t in pending]:  # the loser was at least this slow
                            rs.observe_latency(slow, time.perf_counter() - t0)
                        rs.on_success(r, time.perf_counter() - t0)
                        if timed and self.observe is not None:
                            self.observe(self.shard, time.perf_counter() - t0)
                        return True, task.result()
                    if isinstance(exc, REQUEST_ERRORS):
                        raise exc
                    cause = ("timeout" if isinstance(exc, asyncio.TimeoutError) else
                             "unavailable" if isinstance(exc, ShardUnavailable) else "error")
                    reason = f"replica {r}: {describe(exc) if cause != 'timeout' else f'no answer within {limit:g}s'}"
                    rs.on_failure(r, reason, fatal=cause == "unavailable")
                    reasons.append(reason)
                    causes.add(cause)
        finally:
            for task in pending:
                task.cancel()
        return False, [r for r in order if r not in running.values()]
