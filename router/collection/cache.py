"""Cache policy, pure: an LRU bounded by entries and bytes, with a TTL, on an injected clock.

Two uses: the query-embedding cache (encoder, text) -> vector, and the result cache
(collection, write version, normalised request) -> answer. Result entries can never outlive a write that changes
the answer: every write bumps the collection's version, which is part of the key, so old entries are simply never
asked for again and age out of the LRU.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0   # pushed out by the entry or byte bound
    expired: int = 0     # found past its TTL


class LRUCache:
    """get/put with LRU eviction by `max_entries` and `max_bytes` (as the caller sizes values) and a TTL."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"cache bounds must be >= 1, got {max_entries!r} entries and {max_bytes!r} bytes")
        self.max_entries, self.max_bytes, self.ttl_s, self.clock = max_entries, max_bytes, ttl_s, clock
        self._data: OrderedDict[Hashable, tuple[Any, int, float]] = OrderedDict()  # key -> (value, size, stored at)
        self.bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Any | None:
        item = self._data.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        value, size, at = item
        if self.ttl_s is not None and self.clock() - at > self.ttl_s:
            self._drop(key)
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Store `value` (`size` bytes); False when it alone exceeds the byte bound (then nothing is stored)."""
        if size > self.max_bytes:
            return False
        if key in self._data:
            self._drop(key)
        self._data[key] = (value, size, self.clock())
        self.bytes += size
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))
            self.stats.evictions += 1
        return True

    def _drop(self, key: Hashable) -> None:
        _, size, _ = self._data.pop(key)
        self.bytes -= size


def request_key(collection: str, version: int, request: dict[str, Any]) -> str:
    """A result-cache key: the collection, its write version, and the request in a canonical form (keys sorted,
    fields that do not change the answer left out)."""
    body = {k: v for k, v in request.items() if k not in ("cache", "debug")}
    return f"{collection}\x00{version}\x00" + json.dumps(body, sort_keys=True, separators=(",", ":"))


class EmbeddingCache:
    """Query-text embeddings per encoder in front of an `encode(name, texts, document=False)` coroutine.

    Documents (upserts) pass straight through: they are embedded once and stored, caching them buys nothing."""

    def __init__(self, encode: Callable[..., Any], cache: LRUCache):
        self.encode = encode
        self.cache = cache

    async def __call__(self, name: str, texts: list[str], document: bool = False) -> list[tuple[list[float], bool]]:
        if document:
            return await self.encode(name, texts, document=True)
        out: list[tuple[list[float], bool] | None] = [self.cache.get((name, t)) for t in texts]
        todo = [i for i, hit in enumerate(out) if hit is None]
        if todo:
            fresh = await self.encode(name, [texts[i] for i in todo])
            for i, enc in zip(todo, fresh):
                out[i] = enc
                self.cache.put((name, texts[i]), enc, 8 * len(enc[0]) + len(texts[i]) + 64)
        return out  # type: ignore[return-value]
