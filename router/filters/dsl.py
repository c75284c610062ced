"""Elasticsearch query DSL subset -> a typed filter tree -> Milvus expressions or Elasticsearch queries.

Supported: bool (must, filter, should + minimum_should_match, must_not), term, terms, range (gt/gte/lt/lte on
numbers and ISO dates), match (text fields; `operator` or/and), exists, ids. Fields must be in the collection's
metadata mapping. Semantics follow Elasticsearch: a missing or null field matches no leaf, so `must_not` keeps
documents that lack the field; arrays match when any element does; a `should` list beside must/filter only scores
(it restricts nothing), otherwise at least one should clause must match.

Pushdown: shards store a normalised `meta` JSON column (mapped fields only; keywords as string arrays; numbers,
booleans; dates as epoch milliseconds; no nulls, no empty arrays). Every leaf is rendered as
`((exists meta["f"]) and ...)` so milvus-lite and the Milvus 2.3 server, whose three-valued logic differs on
missing keys, both give Elasticsearch's answer. Values pass through shards.expr's strict literals only.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Union

from cluster.errors import FilterError, InvalidRequest
from shards.expr import MAX_STRING, list_literal, literal, quote_string

MAX_DEPTH = 64
MAX_TERMS = 1024
META_FIELD = "meta"
# The constants, as expressions every Milvus parses: the 2.3 server refuses `true` / `false` literals beside
# `and` / `or` ("can only be used between boolean expressions"). An id is never empty (cluster.names).
MATCH_NONE = 'id == ""'
MATCH_ALL = 'id != ""'
NUMERIC = frozenset({"integer", "float"})
# What an Elasticsearch `long` (an integer field's mapping) and a Milvus INT64 hold: an integer past it is refused at
# the edge (422), in any payload (router.schema.points) and in integer fields and their filters (here), not by a store.
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_TOKEN_RE = re.compile(r"[^\W_]+", re.UNICODE)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$")


# -- the typed tree --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    field: str
    value: Any


@dataclass(frozen=True)
class Terms:
    field: str
    values: tuple


@dataclass(frozen=True)
class Range:
    field: str
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None


@dataclass(frozen=True)
class Match:
    field: str
    query: str
    operator: str = "or"


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class Ids:
    values: tuple


@dataclass(frozen=True)
class Bool:
    must: tuple = ()
    filter: tuple = ()
    should: tuple = ()
    must_not: tuple = ()
    minimum_should_match: int | None = None

    @property
    def required_should(self) -> int:
        """Elasticsearch's default: 1 when should stands alone, 0 beside must/filter (it only scores)."""
        if self.minimum_should_match is not None:
            return self.minimum_should_match
        return 0 if (self.must or self.filter) else (1 if self.should else 0)


Node = Union[Term, Terms, Range, Match, Exists, Ids, Bool]


def and_(*nodes: Node | None) -> Node | None:
    """Conjunction of the given filters (None entries ignored)."""
    parts = tuple(n for n in nodes if n is not None)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Bool(filter=parts)


# -- parsing ---------------------------------------------------------------------------------------------------
def parse_filter(dsl: Any, mapping: dict[str, str], path: str = "filter") -> Node:
    """Validate an ES DSL filter against the mapping; FilterError names the clause path on any problem."""
    return simplify(_parse(dsl, mapping, path, 0))


def _is_conjunction(node: Node) -> bool:
    return isinstance(node, Bool) and not node.should and not node.must_not and not node.minimum_should_match


def simplify(node: Node) -> Node:
    """Same meaning, shallower tree: pure conjunctions are hoisted into their parent, a should list that only
    scores (beside must/filter, no minimum) is dropped, and a bool holding one conjunct is that conjunct.
    Elasticsearch refuses bool nesting past max_nested_depth (30 by default)."""
    if not isinstance(node, Bool):
        return node
    conj: list[Node] = []
    for c in node.must + node.filter:
        c = simplify(c)
        conj.extend(c.must + c.filter if _is_conjunction(c) else (c,))
    should, msm = tuple(simplify(c) for c in node.should), node.minimum_should_match
    if (node.must or node.filter) and not msm:
        should, msm = (), None  # filters do not score: this should restricts nothing
    must_not = tuple(simplify(c) for c in node.must_not)
    if len(conj) == 1 and not should and not must_not and not msm:
        return conj[0]
    return Bool(filter=tuple(conj), should=should, must_not=must_not, minimum_should_match=msm)


def _one_key(obj: Any, path: str) -> tuple[str, Any]:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise FilterError(f"{path}: a clause is an object with exactly one key, got {_show(obj)}", field=path)
    return next(iter(obj.items()))


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(name: Any, mapping: dict[str, str], path: str) -> str:
    if not isinstance(name, str) or name not in mapping:
        known = ", ".join(sorted(mapping)) or "none: the collection has no metadata mapping"
        raise FilterError(f"{path}: field {_show(name)} is not in the metadata mapping (known: {known})", field=path)
    return name


def _parse(dsl: Any, mapping: dict[str, str], path: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        short = path if len(path) <= 120 else f"{path[:40]}...{path[-60:]}"
        raise FilterError(f"{short}: filter nested deeper than {MAX_DEPTH} levels", field=short)
    kind, body = _one_key(dsl, path)
    p = f"{path}.{kind}"
    if kind == "bool":
        return _parse_bool(body, mapping, p, depth)
    if kind == "ids":
        if not isinstance(body, dict) or set(body) != {"values"} or not isinstance(body["values"], list):
            raise FilterError(f"{p}: expected {{'values': [ids...]}}", field=p)
        if len(body["values"]) > MAX_TERMS * 10:
            raise FilterError(f"{p}: more than {MAX_TERMS * 10} ids", field=p)
        return Ids(tuple(_id_value(v, f"{p}.values") for v in body["values"]))
    if kind == "exists":
        if not isinstance(body, dict) or set(body) != {"field"}:
            raise FilterError(f"{p}: expected {{'field': name}}", field=p)
        return Exists(_field(body["field"], mapping, f"{p}.field"))
    name, arg = _one_key(body, p)
    field = _field(name, mapping, f"{p}.{name}")
    ftype = mapping[field]
    fp = f"{p}.{field}"
    if kind == "term":
        if isinstance(arg, dict):
            if set(arg) != {"value"}:
                raise FilterError(f"{fp}: expected a value or {{'value': v}}", field=fp)
            arg = arg["value"]
        if ftype == "text":
            raise FilterError(f"{fp}: term on text field {field!r}; use match", field=fp)
        return Term(field, _value(arg, ftype, fp))
    if kind == "terms":
        if ftype == "text":
            raise FilterError(f"{fp}: terms on text field {field!r}; use match", field=fp)
        if not isinstance(arg, list) or not arg or len(arg) > MAX_TERMS:
            raise FilterError(f"{fp}: expected a list of 1..{MAX_TERMS} values", field=fp)
        return Terms(field, tuple(_value(v, ftype, f"{fp}[{i}]") for i, v in enumerate(arg)))
    if kind == "range":
        if ftype not in NUMERIC | {"date", "keyword"}:
            raise FilterError(f"{fp}: range needs a number, date or keyword field, {field!r} is {ftype}", field=fp)
        if not isinstance(arg, dict) or not arg or not set(arg) <= {"gt", "gte", "lt", "lte"}:
            raise FilterError(f"{fp}: range takes gt, gte, lt, lte (got {_show(arg)})", field=fp)
        return Range(field, **{k: _value(v, ftype, f"{fp}.{k}") for k, v in arg.items()})
    if kind == "match":
        if isinstance(arg, dict):
            extra = set(arg) - {"query", "operator"}
            if extra or "query" not in arg:
                raise FilterError(f"{fp}: match takes query and operator (got {_show(arg)})", field=fp)
            query, op = arg["query"], str(arg.get("operator", "or")).lower()
        else:
            query, op = arg, "or"
        if op not in ("or", "and"):
            raise FilterError(f"{fp}.operator: must be 'or' or 'and', got {_show(op)}", field=fp)
        if ftype == "text":
            if not isinstance(query, str) or len(query) > MAX_STRING:
                raise FilterError(f"{fp}: match query must be a string of at most {MAX_STRING} characters", field=fp)
            return Match(field, query, op)
        return Term(field, _value(query, ftype, fp))  # match on a non-text field is a term, as in ES
    raise FilterError(f"{path}: unknown clause {kind!r}; supported: bool, term, terms, range, match, exists, ids",
                      field=path)


def _parse_bool(body: Any, mapping: dict[str, str], path: str, depth: int) -> Bool:
    allowed = {"must", "filter", "should", "must_not", "minimum_should_match"}
    if not isinstance(body, dict) or not set(body) <= allowed:
        raise FilterError(f"{path}: bool takes {sorted(allowed)} (got {_show(body)})", field=path)
    parts: dict[str, tuple] = {}
    for key in ("must", "filter", "should", "must_not"):
        clauses = body.get(key, [])
        if isinstance(clauses, dict):
            clauses = [clauses]
        if not isinstance(clauses, list):
            raise FilterError(f"{path}.{key}: expected a clause or a list of clauses", field=f"{path}.{key}")
        parts[key] = tuple(_parse(c, mapping, f"{path}.{key}[{i}]", depth + 1) for i, c in enumerate(clauses))
    msm = body.get("minimum_should_match")
    if msm is not None:
        if isinstance(msm, str) and msm.isdigit():
            msm = int(msm)
        if isinstance(msm, bool) or not isinstance(msm, int) or msm < 0:
            raise FilterError(f"{path}.minimum_should_match: expected a non-negative integer, got {_show(msm)}",
                              field=f"{path}.minimum_should_match")
    return Bool(minimum_should_match=msm, **parts)


def _id_value(v: Any, path: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or len(str(v)) > MAX_STRING:
        raise FilterError(f"{path}: ids are strings or integers, got {_show(v)}", field=path)
    return str(v)


def _value(v: Any, ftype: str, path: str) -> Any:
    """A filter value checked against the field's type (dates kept as given, converted when rendered)."""
    if isinstance(v, str) and len(v) > MAX_STRING:
        raise FilterError(f"{path}: value longer than {MAX_STRING} characters", field=path)
    if ftype in ("keyword", "text"):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise FilterError(f"{path}: expected a string, got {_show(v)}", field=path)
        return v if isinstance(v, str) else str(v)
    if ftype in NUMERIC:
        if isinstance(v, str):
            try:
                v = float(v) if ftype == "float" or not v.lstrip("-").isdigit() else int(v)
            except ValueError:
                raise FilterError(f"{path}: expected a number, got {_show(v)}", field=path) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FilterError(f"{path}: expected a finite number, got {_show(v)}", field=path)
        if ftype == "integer" and not INT64_MIN <= v <= INT64_MAX:  # exact for floats too: 2.0**63 is out
            raise FilterError(f"{path}: an integer field holds 64-bit integers (-2**63 .. 2**63-1, an Elasticsearch "
                              f"long), got {_show(v)}", field=path)
        return v
    if ftype == "boolean":
        if isinstance(v, str) and v in ("true", "false"):
            return v == "true"
        if not isinstance(v, bool):
            raise FilterError(f"{path}: expected true or false, got {_show(v)}", field=path)
        return v
    if ftype == "date":
        if not isinstance(v, str) or not _DATE_RE.match(v):
            raise FilterError(f"{path}: expected an ISO date like 2024-05-01 or 2024-05-01T12:00:00Z, got {_show(v)}",
                              field=path)
        epoch_ms(v, path)
        return v
    raise FilterError(f"{path}: unsupported field type {ftype!r}", field=path)


def epoch_ms(value: str, path: str = "date") -> float:
    """ISO date/datetime -> epoch milliseconds (UTC when no offset is given, as Elasticsearch assumes)."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            dt = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        else:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
    except ValueError:
        raise FilterError(f"{path}: {value!r} is not a valid date", field=path) from None
    return dt.timestamp() * 1000.0


def tokens(text: str) -> list[str]:
    """The analysis prism assumes for text fields: lowercased word tokens (Elasticsearch's standard analyzer)."""
    return [t.lower() for t in _TOKEN_RE.findall(text)]


# -- payload normalisation (what shards store in `meta`, and upsert validation) --------------------------------
def normalise_meta(payload: dict[str, Any], mapping: dict[str, str], path: str = "payload") -> dict[str, Any]:
    """The filterable projection of a payload; InvalidRequest names a value that does not fit the mapping."""
    meta: dict[str, Any] = {}
    for field, ftype in mapping.items():
        if field not in payload or payload[field] is None:
            continue
        v, fp = payload[field], f"{path}.{field}"
        if ftype == "text":
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise InvalidRequest(f"{fp}: text field expects a string, got {_show(v)}", field=fp)
            continue  # text is matched in Elasticsearch, never pushed down
        if ftype == "keyword":
            values = v if isinstance(v, list) else [v]
            if not all(isinstance(x, str) for x in values):
                raise InvalidRequest(f"{fp}: keyword field expects a string or a list of strings, got {_show(v)}",
                                     field=fp)
            if values:
                meta[field] = list(values)
            continue
        if isinstance(v, list):
            raise InvalidRequest(f"{fp}: {ftype} field expects a single value, got a list", field=fp)
        try:
            if ftype in NUMERIC:
                meta[field] = _value(v, ftype, fp) if not isinstance(v, str) else _bad(fp, ftype, v)
                if ftype == "integer" and meta[field] != int(meta[field]):
                    _bad(fp, ftype, v)  # Elasticsearch would truncate it, and filters would disagree with shards
            elif ftype == "boolean":
                meta[field] = _value(v, ftype, fp) if isinstance(v, bool) else _bad(fp, ftype, v)
            elif ftype == "date":
                meta[field] = epoch_ms(_value(v, ftype, fp), fp)
        except FilterError as exc:
            raise InvalidRequest(exc.message, field=fp) from None
    return meta


def _bad(path: str, ftype: str, v: Any):
    raise FilterError(f"{path}: {ftype} field expects a {ftype} value, got {_show(v)}", field=path)


# -- Milvus translation ----------------------------------------------------------------------------------------
def to_milvus(node: Node, mapping: dict[str, str]) -> str | None:
    """A Milvus boolean expression over the `meta` column, or None when any part needs Elasticsearch."""
    if isinstance(node, Bool):
        need = node.required_should
        if need > 1:
            return None
        parts = []
        for c in node.must + node.filter:
            e = to_milvus(c, mapping)
            if e is None:
                return None
            parts.append(f"({e})")
        for c in node.must_not:
            e = to_milvus(c, mapping)
            if e is None:
                return None
            parts.append(f"(not ({e}))")
        if need == 1:
            ors = [to_milvus(c, mapping) for c in node.should]
            if any(e is None for e in ors):
                return None
            parts.append("(" + " or ".join(f"({e})" for e in ors) + ")" if ors else f"({MATCH_NONE})")
        return " and ".join(parts) if parts else f"({MATCH_ALL})"
    if isinstance(node, Ids):
        return f"id in {list_literal(node.values)}" if node.values else f"({MATCH_NONE})"
    ftype = mapping[node.field]
    col = f'{META_FIELD}[{quote_string(node.field)}]'
    guard = f"(exists {col})"
    if isinstance(node, Exists):
        return guard if ftype != "text" else None
    if isinstance(node, Match) or ftype == "text":
        return None
    if isinstance(node, Term):
        if ftype == "keyword":
            return f"{guard} and json_contains({col}, {quote_string(node.value)})"
        return f"{guard} and {col} == {literal(_render(node.value, ftype))}"
    if isinstance(node, Terms):
        if ftype == "keyword":
            return f"{guard} and json_contains_any({col}, {list_literal(node.values)})"
        ors = " or ".join(f"{col} == {literal(_render(v, ftype))}" for v in node.values)
        return f"{guard} and ({ors})"
    if isinstance(node, Range):
        if ftype == "keyword":
            return None  # keywords are stored as arrays; lexicographic ranges run in Elasticsearch
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        conds = [f"{col} {ops[k]} {literal(_render(getattr(node, k), ftype))}" for k in ops
                 if getattr(node, k) is not None]
        return " and ".join([guard, *conds])
    raise TypeError(node)


def _render(v: Any, ftype: str) -> Any:
    if ftype == "date":
        return epoch_ms(v)
    if ftype in NUMERIC:
        return float(v)
    return v


def split_conjuncts(node: Node | None, mapping: dict[str, str]) -> tuple[str | None, Node | None]:
    """Split a filter into (the Milvus expression of its translatable AND-parts, the rest for Elasticsearch)."""
    if node is None:
        return None, None
    whole = to_milvus(node, mapping)
    if whole is not None:
        return whole, None
    if not isinstance(node, Bool) or node.required_should > 0 and not (node.must or node.filter):
        return None, node
    # should beside must/filter restricts nothing; so the conjuncts are must + filter + not(must_not).
    pushed, rest = [], []
    for c in node.must + node.filter:
        e = to_milvus(c, mapping)
        (pushed.append(f"({e})") if e is not None else rest.append(c))
    rest_not = []
    for c in node.must_not:
        e = to_milvus(c, mapping)
        (pushed.append(f"(not ({e}))") if e is not None else rest_not.append(c))
    residual = None
    if rest or rest_not or (node.minimum_should_match or 0) > 0:
        residual = Bool(filter=tuple(rest), must_not=tuple(rest_not),
                        should=node.should if (node.minimum_should_match or 0) > 0 else (),
                        minimum_should_match=node.minimum_should_match if (node.minimum_should_match or 0) > 0 else None)
    return (" and ".join(pushed) if pushed else None), residual


# -- Elasticsearch rendering -----------------------------------------------------------------------------------
def to_es(node: Node) -> dict[str, Any]:
    """The validated tree back as an Elasticsearch query (values already type-checked)."""
    if isinstance(node, Bool):
        out: dict[str, Any] = {}
        for key in ("must", "filter", "should", "must_not"):
            clauses = getattr(node, key)
            if clauses:
                out[key] = [to_es(c) for c in clauses]
        if node.minimum_should_match is not None:
            out["minimum_should_match"] = node.minimum_should_match
        return {"bool": out}
    if isinstance(node, Ids):
        return {"ids": {"values": list(node.values)}}
    if isinstance(node, Exists):
        return {"exists": {"field": node.field}}
    if isinstance(node, Term):
        return {"term": {node.field: {"value": node.value}}}
    if isinstance(node, Terms):
        return {"terms": {node.field: list(node.values)}}
    if isinstance(node, Range):
        return {"range": {node.field: {k: getattr(node, k) for k in ("gt", "gte", "lt", "lte")
                                       if getattr(node, k) is not None}}}
    if isinstance(node, Match):
        return {"match": {node.field: {"query": node.query, "operator": node.operator}}}
    raise TypeError(node)
