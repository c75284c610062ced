"""What every chaos run ends with (deploy/bench_chaos.py): each shard's replicas compared with each other (digests
after a full rescan: ids and contents) and with what was acknowledged, and how long after the last fault every
shard's replicas first had equal digests."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from router.replication.antientropy import compare, compare_shard_replicas


async def replicas_equal_now(coord: Any) -> bool:
    """Every shard's replicas hold equal digests now (kept-up-to-date digests: one exchange per replica)."""
    for sh in coord.shards:
        if len(sh.clients) < 2:
            continue
        found = await compare(sh.shard, sh.clients, list(range(len(sh.clients))), 0, timeout_s=30.0)
        if found.unanswered or any(found.differing.values()):
            return False
    return True


async def watch_equal(coord: Any, since: dict[str, float], t0: float, period_s: float = 1.0) -> None:
    """Record in `since["equal_at"]` the first time, after the fault's end (`since["end"]`), that every shard's
    replicas had equal digests; runs until cancelled."""
    while "end" not in since:
        await asyncio.sleep(period_s)  # poll: the fault is still going on
    while "equal_at" not in since:
        try:
            if await replicas_equal_now(coord):
                since["equal_at"] = time.perf_counter() - t0
                return
        except Exception:  # noqa: BLE001 - a replica still restarting: not equal yet
            pass
        await asyncio.sleep(period_s)  # poll


async def final_check(coord: Any, acked: list[str]) -> dict[str, Any]:
    """`diverged_ids`: ids some replica of their shard holds differently from another (full rescan), None when a
    replica could not be compared (counted in `replicas_not_compared`: never reported as equal unseen);
    `writes_lost`: acknowledged ids missing on ANY replica; `replicas_behind`: replicas whose applied seq is behind
    their shard's last write (what the journal says they still need)."""
    diverged: set[str] = set()
    missing: set[str] = set()
    uncompared = 0
    for sh in coord.shards:
        if len(sh.clients) > 1:
            found = await compare_shard_replicas(sh.shard, sh.clients, list(range(len(sh.clients))))
            diverged |= {i for ids in found.differing.values() for i in ids}
            # The reference not answering leaves nothing compared: every replica of the shard is unseen.
            uncompared += len(sh.clients) if found.reference is None else len(found.unanswered)
        mine = [i for i in acked if coord.shard_of(i) == sh.shard]
        for c in sh.clients:
            held = await c.get(mine)
            missing |= set(mine) - set(held)
    behind = sum(st["lag"] > 0 for row in coord.replica_states() for st in row)
    return {"diverged_ids": None if uncompared else len(diverged), "replicas_not_compared": uncompared,
            "writes_lost": len(missing), "replicas_behind": behind}
