"""Vectors in, checked: validation and embedding of query prefetches and of points to upsert.

Encoders are reached through two injected coroutines (the ingress passes its encoder deployments; tests pass
local models), so this module imports no Ray. `source_jobs` is the one rule for which payload field feeds which
space; the server's write path and the bulk-ingest pipeline (`cluster.cli.ingest`) both use it.
"""
from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from cluster.collection_spec import CollectionConfig, SpaceConfig
from cluster.config import ImageLimits
from cluster.errors import ImageBudgetExceeded, InvalidRequest, ModelUnavailable, SpaceNotFound
from router.filters.dsl import normalise_meta
from router.encoding.images import ImageDecoder, decode_base64, is_inline
from router.schema.points import Point, PointError
from router.schema.query import QueryRequest
from router.filters.plan import check_search_params
from shards.api import PointRow

MISSING_POINT = "no such point"
FLOAT32_MAX = 3.4028234663852886e38  # Milvus stores float32: 1e39 passes a float64 finite check and becomes inf
# Milvus 2.3's JSON field limit (common.JSONMaxLength, 65,536 bytes): a payload (or its filterable projection)
# above it is refused by the server, so it is refused here first, before any store sees it.
MAX_PAYLOAD_BYTES = 65_536

# encode(encoder_name, texts, document=False) -> one (vector, truncated) per text (documents: chunked, averaged);
# encode_images(encoder_name, PIL images) -> one (vector, False) per image
Encode = Callable[..., Awaitable[list[tuple[list[float], bool]]]]
EncodeImages = Callable[[str, list[Any]], Awaitable[list[tuple[list[float], bool]]]]


def source_jobs(payload: Mapping[str, Any], given: Mapping[str, Any], spaces: Mapping[str, SpaceConfig]
                ) -> tuple[list[tuple[str, str]], list[str]]:
    """Which spaces of one point are embedded from its payload: ([(space, source value)], [spaces left empty]).

    A space with an encoder and a source field takes the field's non-blank string unless the point brings that
    space's vector itself; a point whose source field is missing or blank simply has no vector in that space."""
    jobs, empty = [], []
    for name, space in spaces.items():
        if name in given or not space.source:
            continue
        value = payload.get(space.source)
        if isinstance(value, str) and value.strip():
            jobs.append((name, value))
        else:
            empty.append(name)
    return jobs, empty


class Vectors:
    """The checks and the embedding that happen before any shard is called."""

    def __init__(self, config: CollectionConfig, *, encode: Encode | None = None,
                 encode_images: EncodeImages | None = None, images: ImageLimits | None = None):
        self.config = config
        self.encode = encode
        self.encode_images = encode_images
        self.images = images or ImageLimits()
        self.decode_pool: Executor | None = None  # None: the process's shared pool of images.decode_workers threads

    @property
    def decoder(self) -> ImageDecoder:
        """Images fetched and decoded off the event loop, within each request's pixel budget."""
        return ImageDecoder(self.images, self.decode_pool)

    def space(self, name: str, field: str) -> SpaceConfig:
        space = self.config.spaces.get(name)
        if space is None:
            raise SpaceNotFound(
                f"{field}: unknown space {name!r}; collection {self.config.name!r} has {sorted(self.config.spaces)}",
                field=field,
            )
        return space

    @staticmethod
    def check(vec: Sequence[float], space: SpaceConfig, field: str) -> None:
        if len(vec) != space.dim:
            raise InvalidRequest(f"{field}: expected {space.dim} dimensions, got {len(vec)}", field=field)
        try:  # one pass in C: a restore or a bulk load checks millions of floats
            a = np.asarray(vec, dtype=np.float64)
        except (OverflowError, TypeError, ValueError):
            a = np.array([np.inf])
        if not (np.isfinite(a).all() and (np.abs(a) <= FLOAT32_MAX).all()):
            raise InvalidRequest(f"{field}: vector has NaN, infinite or out-of-range values (Milvus stores float32: "
                                 f"each component must lie within +-{FLOAT32_MAX:.7g})", field=field)
        if space.metric == "cosine" and not (vec.any() if isinstance(vec, np.ndarray) else any(vec)):
            raise InvalidRequest(f"{field}: a zero vector has no direction, so cosine similarity is undefined for "
                                 "it; send a non-zero vector", field=field)

    # -- queries -----------------------------------------------------------------------------------------------
    def validate_query(self, req: QueryRequest) -> None:
        for i, p in enumerate(req.prefetch):
            space = self.space(p.space, f"prefetch[{i}].space")
            if p.vector is not None:
                self.check(p.vector, space, f"prefetch[{i}].vector")
            check_search_params(space.index.type, p.params, f"prefetch[{i}].params")
            for kind in ("text", "image"):
                if getattr(p, kind) is not None and not space.encoder:
                    raise InvalidRequest(f"prefetch[{i}].{kind}: space {p.space!r} has no encoder; send a vector",
                                         field=f"prefetch[{i}].{kind}")
        if isinstance(req.with_vectors, list):
            for space in req.with_vectors:
                self.space(space, "with_vectors")

    async def query_vectors(self, req: QueryRequest) -> tuple[list[list[float]], list[str]]:
        """One vector per prefetch: given, or embedded (texts batched per encoder); notes say what was cut."""
        out: list[list[float] | None] = [p.vector for p in req.prefetch]
        notes: list[str] = []
        budget = self.decoder.budget()
        for i, p in enumerate(req.prefetch):
            if p.image is not None:
                space, field = self.config.spaces[p.space], f"prefetch[{i}].image"
                img = await self.decoder.decode(decode_base64(p.image, field), field, budget)
                (vec, _), = await self._images(space.encoder, [img], field)
                self.check(vec, space, field)
                out[i] = vec
        by_encoder: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(req.prefetch):
            if p.text is not None:
                by_encoder[self.config.spaces[p.space].encoder].append(i)
        for encoder, idxs in by_encoder.items():
            encoded = await self._texts(encoder, [req.prefetch[i].text for i in idxs])
            for i, (v, truncated) in zip(idxs, encoded):
                self.check(v, self.config.spaces[req.prefetch[i].space], f"prefetch[{i}].text")
                out[i] = v
                if truncated:
                    notes.append(f"prefetch[{i}].text was longer than encoder {encoder!r} reads; it was truncated")
        return [v if isinstance(v, np.ndarray) else list(v) for v in out], notes

    # -- points ------------------------------------------------------------------------------------------------
    async def prepare_points(self, points: Sequence[Point]) -> tuple[list[PointRow], list[str], list[PointError]]:
        """Validate the batch (structural errors fail it whole, nothing written), then embed. A point whose
        image cannot be read or embedded fails alone, with its reason; the rest of the batch lands."""
        rows: list[PointRow] = []
        notes: list[str] = []
        texts: dict[str, list[tuple[int, str]]] = defaultdict(list)   # space -> [(row index, text)]
        images: dict[str, list[tuple[int, str]]] = defaultdict(list)  # space -> [(row index, reference)]
        for i, p in enumerate(points):
            vectors = dict(p.vectors or {})
            for space_name, vec in vectors.items():
                self.check(vec, self.space(space_name, f"points[{i}].vectors"), f"points[{i}].vectors.{space_name}")
            payload = dict(p.payload)
            jobs, empty = source_jobs(p.payload, vectors, self.config.spaces)
            for space_name, value in jobs:
                space = self.config.spaces[space_name]
                if space.modality == "image":
                    images[space_name].append((i, value))
                    if is_inline(value):
                        payload[space.source] = f"<inline image, {len(value)} base64 characters>"
                else:
                    texts[space_name].append((i, value))
            if (vectors or jobs) and empty:
                notes.append(f"points[{i}] (id {p.id!r}) has no source text for "
                             + ", ".join(f"space {s!r} (field {self.config.spaces[s].source!r})" for s in empty)
                             + ": no vector there, so searches in it will not find this point")
            meta = normalise_meta(p.payload, self.config.metadata, f"points[{i}].payload")
            for what, value in (("payload", payload), ("payload (its filterable fields)", meta)):
                size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
                if size > MAX_PAYLOAD_BYTES:
                    raise InvalidRequest(f"points[{i}].payload: the {what} takes {size} bytes as JSON; Milvus stores at "
                                         f"most {MAX_PAYLOAD_BYTES}", field=f"points[{i}].payload")
            rows.append(PointRow(id=p.id, payload=payload, meta=meta, vectors=vectors))
        for space_name, items in texts.items():
            space = self.config.spaces[space_name]
            encoded = await self._texts(space.encoder, [t for _, t in items], document=True)
            for (i, _), (v, _) in zip(items, encoded):
                self.check(v, space, f"points[{i}].payload.{space.source}")
                rows[i].vectors[space_name] = v
        bad = await self._embed_images(rows, images)
        for i, row in enumerate(rows):
            if i not in bad and not row.vectors:
                raise InvalidRequest(
                    f"points[{i}] (id {row.id!r}) has no vector for any space and no source text to embed",
                    field=f"points[{i}].vectors",
                )
        failed = [PointError(id=rows[i].id, reason=reason) for i, reason in sorted(bad.items())]
        return [row for i, row in enumerate(rows) if i not in bad], notes, failed

    async def _embed_images(self, rows: list[PointRow], images: dict[str, list[tuple[int, str]]]) -> dict[int, str]:
        """Decode and embed image sources into `rows`; returns {row index: reason} for the points that failed.
        Decoding runs in the decoder's pool (its size bounds how many are decoded at once) and each image is shrunk
        as it is decoded; the request's images together must stay within images.max_request_pixels, else the whole
        request is a 413 and nothing is written."""
        bad: dict[int, str] = {}
        budget = self.decoder.budget()

        async def one(i: int, ref: str, field: str):
            try:
                return i, await self.decoder.load(ref, field, budget)
            except ImageBudgetExceeded:
                raise
            except InvalidRequest as exc:  # includes PayloadTooLarge: this point fails, the batch goes on
                bad.setdefault(i, exc.message)
                return i, None

        for space_name, items in images.items():
            space = self.config.spaces[space_name]
            decoded = await asyncio.gather(*(one(i, ref, f"points[{i}].payload.{space.source}") for i, ref in items))
            good = [(i, img) for i, img in decoded if img is not None and i not in bad]
            if good:
                encoded = await self._images(space.encoder, [img for _, img in good], f"spaces.{space_name}.encoder")
                for (i, _), (v, _) in zip(good, encoded):
                    rows[i].vectors[space_name] = v
        return bad

    # -- encoders ----------------------------------------------------------------------------------------------
    async def _texts(self, encoder: str, texts: list[str], document: bool = False) -> list[tuple[list[float], bool]]:
        if self.encode is None:
            raise ModelUnavailable(f"encoder {encoder!r} is not available in this process")
        return await (self.encode(encoder, texts, document=True) if document else self.encode(encoder, texts))

    async def _images(self, encoder: str, images: list[Any], field: str) -> list[tuple[list[float], bool]]:
        if self.encode_images is None:
            raise ModelUnavailable(f"{field}: no image encoder is available in this process", field=field)
        return await self.encode_images(encoder, images)


def merge_updates(config: CollectionConfig, updates: Sequence[Any], stored: Mapping[str, PointRow]
                  ) -> tuple[list[Point], list[PointError]]:
    """Partial vector updates applied to the stored points: new vectors as given, spaces whose source field
    changed re-embedded (left out here, so the write path embeds them), every other vector kept as stored."""
    points, missing = [], []
    for u in updates:
        old = stored.get(u.id)
        if old is None:
            missing.append(PointError(id=u.id, reason=MISSING_POINT))
            continue
        payload = {**old.payload, **(u.sources or {})}
        changed = {s for s, sp in config.spaces.items() if sp.source and sp.source in (u.sources or {})}
        keep = {s: v for s, v in old.vectors.items() if s not in changed}
        points.append(Point(id=u.id, payload=payload, vectors={**keep, **(u.vectors or {})}))
    return points, missing
