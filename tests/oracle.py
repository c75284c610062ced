"""The filter oracle: whether a point matches a parsed filter, by Elasticsearch semantics over its raw payload.

Brute force in plain Python, independent of the Milvus translation and of Elasticsearch: the tests hold both
against it. It lives with the tests, not the product.
"""
from __future__ import annotations

from typing import Any

from cluster.errors import FilterError
from router.filters.dsl import NUMERIC, Bool, Exists, Ids, Match, Node, Range, Term, Terms, epoch_ms, tokens


def evaluate(node: Node, point_id: str, payload: dict[str, Any], mapping: dict[str, str]) -> bool:
    """Whether a point matches, by Elasticsearch semantics over its raw payload."""
    if isinstance(node, Bool):
        if not all(evaluate(c, point_id, payload, mapping) for c in node.must + node.filter):
            return False
        if any(evaluate(c, point_id, payload, mapping) for c in node.must_not):
            return False
        need = node.required_should
        return need == 0 or sum(evaluate(c, point_id, payload, mapping) for c in node.should) >= need
    if isinstance(node, Ids):
        return point_id in node.values
    values = _values(payload.get(node.field))
    if isinstance(node, Exists):
        return bool(values)
    ftype = mapping[node.field]
    if isinstance(node, Match):
        have = {t for v in values for t in tokens(v)}
        want = tokens(node.query)
        if not want:
            return False
        return all(t in have for t in want) if node.operator == "and" else any(t in have for t in want)
    conv = [c for c in (_comparable(v, ftype) for v in values) if c is not None]
    if isinstance(node, Term):
        return _comparable(node.value, ftype) in conv
    if isinstance(node, Terms):
        wanted = {_comparable(v, ftype) for v in node.values}
        return any(c in wanted for c in conv)
    if isinstance(node, Range):
        bounds = {k: _comparable(getattr(node, k), ftype) for k in ("gt", "gte", "lt", "lte")
                  if getattr(node, k) is not None}
        return any(_in_range(c, bounds) for c in conv)
    raise TypeError(node)


def _values(v: Any) -> list[Any]:
    if v is None:
        return []
    return [x for x in v if x is not None] if isinstance(v, list) else [v]


def _comparable(v: Any, ftype: str) -> Any:
    if ftype in NUMERIC:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    if ftype == "date":
        try:
            return epoch_ms(v) if isinstance(v, str) else None
        except FilterError:
            return None
    if ftype == "boolean":
        return v if isinstance(v, bool) else None
    return v if isinstance(v, str) else None


def _in_range(c: Any, bounds: dict[str, Any]) -> bool:
    return ((("gt" not in bounds) or c > bounds["gt"]) and (("gte" not in bounds) or c >= bounds["gte"])
            and (("lt" not in bounds) or c < bounds["lt"]) and (("lte" not in bounds) or c <= bounds["lte"]))


def bm25(docs: dict[str, dict[str, Any]], fields: list[tuple[str, float]], query: str,
         k1: float = 1.2, b: float = 0.75) -> dict[str, float]:
    """Reference BM25 (Lucene's formula, exact document lengths) of `query` over `docs` (id -> payload): per field,
    with that field's own document count and average length, each query token scored, boosts multiplied, fields
    added up (a bool of one `match` per field). Ids that match no token are absent."""
    import math
    import re

    # Elasticsearch's standard analyzer (Unicode word boundaries): "chef's" and "1.8" are one token each.
    word = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019][^\W_]+)*")

    def tokens(text: str) -> list[str]:
        return [t.lower() for t in word.findall(text)]

    out: dict[str, float] = {}
    q = tokens(query)
    for field, boost in fields:
        toks = {i: tokens(p[field]) for i, p in docs.items() if isinstance(p.get(field), str) and tokens(p[field])}
        n_docs = len(toks)
        if not n_docs:
            continue
        avgdl = sum(len(t) for t in toks.values()) / n_docs
        for term in q:
            n_t = sum(term in t for t in toks.values())
            if not n_t:
                continue
            idf = math.log(1 + (n_docs - n_t + 0.5) / (n_t + 0.5))
            for i, t in toks.items():
                tf = t.count(term)
                if tf:
                    norm = k1 * (1 - b + b * len(t) / avgdl)
                    out[i] = out.get(i, 0.0) + boost * idf * tf * (k1 + 1) / (tf + norm)
    return out
