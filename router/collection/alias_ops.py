"""PrismService's alias endpoints (the rules: router.collection.aliases; kept with the catalog, which every ingress
replica reads, so a switch is seen everywhere at once)."""
from __future__ import annotations

import asyncio
from typing import Any

from cluster.config import parse_model
from router.collection.aliases import check_scope, visible
from router.schema.collections import AliasChange, AliasList, AliasRequest


class AliasOps:
    """Mixed into PrismService: uses its `catalog` and `_lock`."""

    catalog: Any
    _lock: asyncio.Lock

    async def set_alias(self, alias: str, body: Any, principal: Any = None) -> AliasChange:
        """Create `alias` or switch it, atomically for every ingress replica; a scoped key must hold both names."""
        req = parse_model(AliasRequest, body, "alias")
        check_scope(principal, alias, req.collection)
        async with self._lock:  # not while this ingress deletes the collection
            before = await asyncio.to_thread(self.catalog.set_alias, alias, req.collection)
        return AliasChange(alias=alias, collection=req.collection, previous=before)

    async def delete_alias(self, alias: str, principal: Any = None) -> AliasChange:
        check_scope(principal, alias)
        return AliasChange(alias=alias, collection=None, previous=await asyncio.to_thread(self.catalog.delete_alias, alias))

    def list_aliases(self, principal: Any = None) -> AliasList:
        """Every alias and its collection; those a scoped key's scope names, given its principal."""
        return AliasList(aliases=visible(self.catalog.aliases(), getattr(principal, "collections", None)))
