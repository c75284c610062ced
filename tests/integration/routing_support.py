"""What the routing tests share: a README example run against the service in process, a shard search held open
at will, and a count of the calls each shard gets."""
from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any, Callable

import httpx

from cluster.errors import PrismError


def run_readme_example(code: str, svc: Any, run: Callable[[Any], Any]) -> None:
    """`code` (a README snippet talking to BASE over httpx) with its HTTP calls answered by `svc` in process."""

    def handle(request: httpx.Request) -> httpx.Response:
        m = re.fullmatch(r"/v1/collections/(\w+)(/points|/query|/rebalance)?", request.url.path)
        name, what = m.group(1), m.group(2)
        body = json.loads(request.content) if request.content else None
        call = {("PUT", None): lambda: svc.create_collection(name, body),
                ("GET", None): lambda: svc.info(name),
                ("DELETE", None): lambda: svc.delete_collection(name),
                ("POST", "/points"): lambda: svc.upsert(name, body),
                ("POST", "/rebalance"): lambda: svc.rebalance(name, body),
                ("POST", "/query"): lambda: svc.query(name, body)}[(request.method, what)]
        try:
            answer = run(call())
        except PrismError as exc:
            return httpx.Response(exc.status, json={"message": exc.message, "field": exc.field})
        return httpx.Response(200, json=answer if isinstance(answer, dict) else answer.model_dump(mode="json"))

    code = code.replace('httpx.Client(base_url=BASE, timeout=60)', 'httpx.Client(base_url=BASE, transport=TRANSPORT)')
    exec(compile(code, "README.md", "exec"), {"TRANSPORT": httpx.MockTransport(handle)})


def held_search(shard: Any) -> tuple[Callable[..., Any], asyncio.Event, asyncio.Event]:
    """A stand-in for `shard.search` that waits for `gate` (set `entered` first), then searches: a query held at
    this shard while something else happens. Returns (the stand-in, gate, entered)."""
    gate, entered, real = asyncio.Event(), asyncio.Event(), shard.search

    async def held(*a, **kw):
        entered.set()
        await gate.wait()
        return await real(*a, **kw)

    return held, gate, entered


def count_calls(coord: Any) -> Counter:
    """Every shard's upsert, delete and read wrapped to count: (shard, "upsert" | "delete" | "read") -> calls."""
    calls: Counter = Counter()
    for s, sh in enumerate(coord.shards):
        for kind in ("upsert", "delete", "read"):
            def counted(*a, _real=getattr(sh, kind), _key=(s, kind), **kw):
                calls[_key] += 1
                return _real(*a, **kw)
            setattr(sh, kind, counted)
    return calls
