"""The rules of collection aliases: a name that stands for one collection, switched atomically (a re-index or a
restore goes into a new collection, then the alias moves to it and no query fails). Pure: no I/O.

Aliases and collections share one namespace: an alias follows the collection-name rule (cluster.names), may not
equal a collection's name nor differ from one (or from another alias) only in case, and points to a collection,
never to another alias (one look-up resolves any name). A collection an alias points to cannot be deleted.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from cluster.errors import CollectionAliased, CollectionExists, CollectionNotFound, Forbidden, InvalidRequest
from cluster.names import check_name


def check_alias(alias: str, collection: str, collections: Iterable[str], aliases: Mapping[str, str]) -> None:
    """Raise unless `alias` may point to `collection`, given the collections and the aliases there are now."""
    check_name(alias, field="alias", what="alias")
    check_name(collection, field="collection")
    names = list(collections)
    twin = next((n for n in names if n.lower() == alias.lower()), None)
    if twin is not None:
        raise CollectionExists(f"alias {alias!r}: a collection is named {twin!r}; an alias may not take a "
                               "collection's name (nor differ from one only in case)", field="alias")
    twin = next((a for a in aliases if a.lower() == alias.lower() and a != alias), None)
    if twin is not None:
        raise CollectionExists(f"alias {alias!r}: alias {twin!r} exists; aliases may not differ only in case",
                               field="alias")
    if collection in aliases:
        raise InvalidRequest(f"collection: {collection!r} is an alias (of {aliases[collection]!r}); an alias points "
                             "to a collection, not to another alias", field="collection")
    if collection not in names:
        raise CollectionNotFound(f"collection {collection!r} not found", field="collection")


def check_collection_name(name: str, aliases: Mapping[str, str]) -> None:
    """Raise if a new collection `name` would take an alias's name (or differ from one only in case)."""
    twin = next((a for a in aliases if a.lower() == name.lower()), None)
    if twin is not None:
        raise CollectionExists(f"collection {name!r}: alias {twin!r} (of {aliases[twin]!r}) holds that name; "
                               "delete or rename the alias first", field="name")


def aliases_of(collection: str, aliases: Mapping[str, str]) -> list[str]:
    """The aliases that point to `collection`, sorted."""
    return sorted(a for a, target in aliases.items() if target == collection)


def check_deletable(collection: str, aliases: Mapping[str, str]) -> None:
    """Raise CollectionAliased (409, naming the aliases) if any alias points to `collection`."""
    held = aliases_of(collection, aliases)
    if held:
        raise CollectionAliased(f"collection {collection!r} is the target of alias"
                                f"{'es' if len(held) > 1 else ''} {', '.join(map(repr, held))}: switch or delete "
                                f"{'them' if len(held) > 1 else 'it'} first", field="name")


def visible(aliases: Mapping[str, str], scope: Collection[str] | None) -> dict[str, str]:
    """The aliases a key scoped to `scope` may see (all with None): those whose own name is in its scope, as a
    scope names what a key may call by name."""
    return dict(aliases) if scope is None else {a: c for a, c in aliases.items() if a in scope}


def check_scope(principal: object, *names: str) -> None:
    """Raise Forbidden unless a key scoped to some collections (`principal.collections`; None: every one) holds
    every one of `names`: what a request reaches beyond its path (an alias's target, a restore's source)."""
    scope = getattr(principal, "collections", None)
    if scope is None:
        return
    outside = [n for n in names if n not in scope]
    if outside:
        raise Forbidden(f"key {getattr(principal, 'key_id', '?')} is scoped to collections that do not include "
                        f"{outside[0]!r}", field="collection")
