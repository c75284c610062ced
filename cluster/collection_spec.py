"""What a collection is: its named vector and lexical spaces, their indexes, shard and replica counts, write
quorum and metadata mapping (a collection spec is user input: every field is checked here)."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.errors import InvalidRequest
from cluster.names import name_problem

MAX_DIM = 32_768
MAX_SHARDS = 256
MAX_REPLICAS = 8

# Index types by where they can run. Milvus-lite (3.x) knows only the first set; the 2.3 server adds IVF_PQ;
# GPU types need a GPU-capable Milvus server, which this project can only configure, never run, on CPU machines.
CPU_INDEX_TYPES = frozenset({"FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"})
SERVER_ONLY_INDEX_TYPES = frozenset({"IVF_PQ"})
GPU_INDEX_TYPES = frozenset({"GPU_CAGRA", "GPU_IVF_PQ"})
ALL_INDEX_TYPES = CPU_INDEX_TYPES | SERVER_ONLY_INDEX_TYPES | GPU_INDEX_TYPES

METADATA_TYPES = frozenset({"keyword", "float", "integer", "date", "text", "boolean"})
# Where a point lives, kept in its Elasticsearch document beside the payload (router.metadata.steps): the shards
# that may hold a copy, its home first. Reserved: a payload, mapping or lexical field of this name is refused, and
# it is never returned as payload.
SHARD_FIELD = "_prism_shard"


def reserved_field(field: str) -> str | None:
    """Why `field` cannot be a payload field name, or None."""
    return f"{field!r} is reserved (prism keeps where each point lives under it)" if field == SHARD_FIELD else None


class Strict(BaseModel):
    """A configuration section: unknown keys and NaN/Infinity are errors, not silently taken."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a collection spec is user input too


class IndexConfig(Strict):
    """A Milvus index: its type and build parameters (which must really reach Milvus)."""

    type: str = "HNSW"
    params: dict[str, int | float | str] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ALL_INDEX_TYPES:
            raise ValueError(f"unsupported index type {value!r}; known: {sorted(ALL_INDEX_TYPES)}")
        return upper


class SpaceConfig(Strict):
    """A named vector space: dimension, metric, and where its vectors come from."""

    dim: int = Field(ge=1, le=MAX_DIM)
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    encoder: str | None = None
    source: str | None = None
    modality: Literal["text", "image"] = "text"  # what the source field holds (images: base64, path or URL)
    index: IndexConfig = Field(default_factory=IndexConfig)

    @model_validator(mode="after")
    def _encoder_needs_source(self) -> "SpaceConfig":
        if self.source and not self.encoder:
            raise ValueError(f"space has source {self.source!r} but no encoder to embed it")
        return self


LEXICAL_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-]{0,63})(?:\^(\d+(?:\.\d+)?))?$")


class LexicalSpaceConfig(Strict):
    """A lexical space: BM25 over payload text fields, answered by the metadata store (Elasticsearch) with the
    collection's global term statistics. `fields` take an optional boost: `"name^2"`."""

    kind: Literal["bm25"] = "bm25"
    fields: list[str] = Field(min_length=1, max_length=32)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        for f in value:
            if not LEXICAL_FIELD_RE.match(f):
                raise ValueError(f"field {f!r} must be a payload field name, optionally with a boost: 'name^2'")
            if reserved_field(LEXICAL_FIELD_RE.match(f).group(1)):
                raise ValueError(f"field {reserved_field(LEXICAL_FIELD_RE.match(f).group(1))}")
        if len({LEXICAL_FIELD_RE.match(f).group(1) for f in value}) != len(value):
            raise ValueError(f"fields {value!r} name a field twice")
        return value

    def boosts(self) -> list[tuple[str, float]]:
        """(field, boost) pairs."""
        out = []
        for f in self.fields:
            m = LEXICAL_FIELD_RE.match(f)
            out.append((m.group(1), float(m.group(2) or 1.0)))
        return out


def check_index_support(index: IndexConfig, backend_kind: str, gpu: bool = False) -> None:
    """Raise when the index type cannot run on this backend ('lite' or 'server'); never fall back silently."""
    if index.type in GPU_INDEX_TYPES and not gpu:
        raise InvalidRequest(
            f"index type {index.type!r} needs a GPU-capable Milvus server (milvus.gpu=true)", field="index.type"
        )
    if index.type in SERVER_ONLY_INDEX_TYPES and backend_kind == "lite":
        raise InvalidRequest(f"index type {index.type!r} is not supported by milvus-lite", field="index.type")


class CollectionConfig(Strict):
    """A collection: its named spaces, shard and replica counts, and metadata mapping."""

    name: str
    spaces: dict[str, SpaceConfig]
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS)
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    write_quorum: Literal["all", "majority"] | int = "majority"
    metadata: dict[str, str] = Field(default_factory=dict)
    # Spaces of kind bm25 (given among `spaces` or here): Elasticsearch answers them; shards hold none.
    lexical: dict[str, LexicalSpaceConfig] = Field(default_factory=dict)
    # Where points live and which shards a query visits: {"method": "hash"} (the ring over ids), {"method":
    # "vector", "space": S, "centroids": N} or {"method": "key", "field": F}. Its shape depends on the spaces and
    # the mapping, so router.routing.settings.check_routing checks it where a collection is made (the service).
    routing: dict[str, Any] = Field(default_factory=lambda: {"method": "hash"})

    @model_validator(mode="before")
    @classmethod
    def _split_lexical(cls, data: Any) -> Any:
        """`spaces` may mix vector spaces and `{"kind": "bm25", ...}` ones; the lexical ones move to `lexical`."""
        if not isinstance(data, dict) or not isinstance(data.get("spaces"), dict) \
                or not isinstance(data.get("lexical") or {}, dict):
            return data  # the field validators say what is wrong with these
        spaces, lexical = {}, dict(data.get("lexical") or {})
        for name, space in data["spaces"].items():
            kind = space.get("kind") if isinstance(space, dict) else None
            if kind == "bm25":
                if name in lexical:
                    raise ValueError(f"space {name!r} is given twice")
                lexical[name] = space
            elif kind == "dense":
                spaces[name] = {k: v for k, v in space.items() if k != "kind"}
            elif kind is not None:
                raise ValueError(f"space {name!r}: unknown kind {kind!r}; known: dense, bm25")
            else:
                spaces[name] = space
        return {**data, "spaces": spaces, **({"lexical": lexical} if lexical else {})}

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = name_problem(value)  # cluster.names: the one rule, checked at every entry
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("spaces")
    @classmethod
    def _spaces(cls, value: dict[str, SpaceConfig]) -> dict[str, SpaceConfig]:
        if not value:
            raise ValueError("a collection needs at least one vector space")
        for name in value:
            problem = name_problem(name, "space name")
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _lexical_fields_are_text(self) -> "CollectionConfig":
        for name in self.lexical:
            problem = name_problem(name, "space name")
            if problem:
                raise ValueError(problem)
            if name in self.spaces:
                raise ValueError(f"space {name!r} is both a vector and a lexical space")
            for field, _ in self.lexical[name].boosts():
                kind = self.metadata.setdefault(field, "text")
                if kind != "text":
                    raise ValueError(f"lexical space {name!r} reads field {field!r}, which is mapped as {kind!r}; "
                                     "BM25 needs a text field")
        return self

    @model_validator(mode="after")
    def _quorum_fits(self) -> "CollectionConfig":
        if isinstance(self.write_quorum, int) and not 1 <= self.write_quorum <= self.replicas:
            raise ValueError(f"write_quorum {self.write_quorum!r} must be between 1 and replicas ({self.replicas})")
        return self

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for field, kind in value.items():
            if reserved_field(field):
                raise ValueError(f"metadata field {reserved_field(field)}")
            if kind not in METADATA_TYPES:
                raise ValueError(f"metadata field {field!r} has type {kind!r}; known: {sorted(METADATA_TYPES)}")
        return value
