"""Per-key asyncio locks: a point's read-modify-write (a partial vector update) runs alone among this process's
writes to that point. Entries exist only while someone holds or waits for them."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Every key's lock, taken in sorted order (two callers sharing keys cannot deadlock)."""
        ordered = sorted(set(keys))
        for k in ordered:
            lock, users = self._locks.get(k, (None, 0))
            self._locks[k] = (lock or asyncio.Lock(), users + 1)
        taken: list[str] = []
        try:
            for k in ordered:
                await self._locks[k][0].acquire()
                taken.append(k)
            yield
        finally:
            for k in taken:
                self._locks[k][0].release()
            for k in ordered:
                lock, users = self._locks[k]
                if users == 1:
                    del self._locks[k]
                else:
                    self._locks[k] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
