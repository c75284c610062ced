"""The chaos benchmark's load (deploy/bench_chaos.py): the same mixed load in every run, a fault injected into it, and
the run's row measured from it (queries failed or partial, p99 before, during and after the fault, recovery time),
closed by deploy/chaos_checks.py's comparison of every shard's replicas."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.chaos_checks import final_check, watch_equal
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from router.schema.query import QueryRequest

DIM = 64


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2)


@dataclass
class Fault:
    """`inject()` starts the fault and returns when it is over (the actor killed, the server back up);
    `queries` picks each worker's query (default: an unfiltered vector query)."""

    name: str
    inject: Callable[[Coordinator], Awaitable[None]]
    query: Callable[[random.Random, list[list[float]]], QueryRequest] | None = None
    notes: list[str] = field(default_factory=list)
    kind_of: Callable[[QueryRequest], str] = lambda req: "vector"  # how a query is counted in `by_kind`


def vector_query(rng: random.Random, qs: list[list[float]], **extra: Any) -> QueryRequest:
    return QueryRequest(prefetch=[{"space": "v", "vector": qs[rng.randrange(len(qs))]}], fusion={"method": "none"},
                        limit=10, with_payload=False, cache=False, **extra)


def all_live(coord: Coordinator) -> bool:
    return all(st["state"] == "live" for row in coord.replica_states() for st in row)


async def run_load(coord: Coordinator, fault: Fault, *, seconds: float, warmup_s: float, concurrency: int,
                   vecs: Any, qs: list[list[float]], payload: Callable[[int], dict] = lambda i: {}) -> dict:
    """The mixed load with `fault` injected at `warmup_s`; returns the run's row."""
    rng = random.Random(1)
    t0 = time.perf_counter()
    end = t0 + seconds
    samples: list[tuple[float, float, str]] = []  # (t, ms, outcome) of reads
    kinds: list[str] = []
    acked: list[str] = []
    refused_writes = [0]
    window: dict[str, float] = {}
    next_id = [0]
    pick = fault.query or vector_query

    async def worker() -> None:
        while time.perf_counter() < end:
            t = time.perf_counter()
            if rng.random() < 0.2:
                ids = [f"w{next_id[0] + k}" for k in range(10)]
                next_id[0] += 10
                try:
                    await coord.upsert([Point(id=i, payload=payload(k), vectors={"v": vecs[rng.randrange(len(vecs))].tolist()})
                                        for k, i in enumerate(ids)])
                    acked.extend(ids)
                except Exception:  # noqa: BLE001 - refused (not acknowledged): counted, never expected to be held
                    refused_writes[0] += 1
                continue
            req = pick(rng, qs)
            try:
                r = await coord.query(req)
                outcome = "partial" if r.partial else "ok"
            except Exception:  # noqa: BLE001 - counted as failed
                outcome = "failed"
            samples.append((t - t0, (time.perf_counter() - t) * 1000, outcome))
            kinds.append(fault.kind_of(req))

    async def healer() -> None:
        while True:
            await coord.heal()
            await asyncio.sleep(0.5)

    async def injector() -> None:
        await asyncio.sleep(warmup_s)
        window["start"] = time.perf_counter() - t0
        await fault.inject(coord)
        window["end"] = time.perf_counter() - t0
        while time.perf_counter() < end + 120:  # recovered: every replica live and a query answers complete
            if all_live(coord):
                try:
                    if not (await coord.query(pick(rng, qs))).partial:
                        break
                except Exception:  # noqa: BLE001 - not yet
                    pass
            await asyncio.sleep(0.1)
        window["recovered"] = time.perf_counter() - t0

    heal_task = asyncio.create_task(healer())
    equal_task = asyncio.create_task(watch_equal(coord, window, t0))
    try:
        await asyncio.gather(injector(), *(worker() for _ in range(concurrency)))
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline and not all_live(coord):
            await asyncio.sleep(0.5)
        await asyncio.wait_for(equal_task, 120)  # the load is over: replicas must come to equal digests
    except asyncio.TimeoutError:
        pass  # reported as null: never equal within 120 s of the load's end
    finally:
        heal_task.cancel()
        equal_task.cancel()
    checked = await final_check(coord, acked)
    fs, fe, rec = window["start"], window.get("end", window["start"]), window["recovered"]
    during = [ms for t, ms, o in samples if fs <= t < rec and o != "failed"]
    after = [ms for t, ms, o in samples if t >= rec and o != "failed"]
    by_kind: dict[str, dict[str, int]] = {}
    for (t, _, o), k in zip(samples, kinds):
        if fs <= t < rec:
            row = by_kind.setdefault(k, {"queries": 0, "failed": 0})
            row["queries"] += 1
            row["failed"] += o == "failed"
    return {"fault": fault.name, "queries": len(samples), "during_fault_by_kind": by_kind, "failed": sum(o == "failed" for *_, o in samples),
            "partial": sum(o == "partial" for *_, o in samples),
            "failed_during_fault": sum(o == "failed" and fs <= t < rec for t, _, o in samples),
            "p99_ms_before": _pct([ms for t, ms, o in samples if t < fs and o != "failed"], 99),
            "p99_ms_during": _pct(during, 99), "p99_ms_after": _pct(after, 99),
            "fault_s": round(fe - fs, 2), "recovery_s": round(rec - fe, 2),
            "writes_acked": len(acked), "writes_refused": refused_writes[0] * 10, **checked,
            "replicas_equal_after_s": round(window["equal_at"] - fe, 2) if "equal_at" in window else None,
            "seconds": seconds, "concurrency": concurrency, "shards": coord.config.shards,
            "replicas": coord.config.replicas, "write_quorum": coord.config.write_quorum, "notes": fault.notes}


async def preload(coord: Coordinator, vecs: Any, n: int, payload: Callable[[int], dict] = lambda i: {}) -> None:
    """The `n` points p0, p1, ... (vectors from `vecs`), upserted 2000 a request before the load starts."""
    for i in range(0, n, 2000):
        await coord.upsert([Point(id=f"p{j}", payload=payload(j), vectors={"v": vecs[j].tolist()})
                            for j in range(i, min(n, i + 2000))])
