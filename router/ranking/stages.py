"""Post-fusion stages, applied in order to the GLOBAL fused candidates (never per shard). Pure functions over
typed inputs; inputs are never mutated.

- formula: the fused score plus (or times) boosts: `equals` (payload field equal to / containing a value: add a
  constant) and decays (`gauss`, `exp`, `linear`, as Elasticsearch's decay functions) on a number or date field.
  A point missing the field gets no boost (factor 1 when multiplying, nothing added otherwise).
- mmr: maximal marginal relevance over the stored vectors of one space (cosine): at each step the candidate with
  the best lambda * relevance - (1 - lambda) * (highest similarity to one already chosen), relevance being the
  incoming score min-max scaled to [0, 1] over the candidates. The score becomes that objective.
- group_by: hits grouped by a payload field's value (each value of a list field is a group), groups ordered by
  their best hit, at most `size` hits per group and `groups` groups; hits without the field are left out.
- run_stages: a request's stages in order, with each id's score before and after every one.
- explain: each hit's score taken apart, per prefetch and per stage (a query with `explain: true`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.errors import InvalidRequest
from router.filters.values import distance, number
from router.ranking.fusion import contributions
from router.schema.query import Explanation, Hit, PrefetchExplanation, QueryRequest, StageExplanation
from shards.api import ScoredId

def decay(kind: str, value: float, origin: float, scale: float, offset: float = 0.0, at: float = 0.5) -> float:
    """Elasticsearch's decay functions: 1 within `offset` of `origin`, `at` at `offset + scale`."""
    d = max(0.0, abs(value - origin) - offset)
    if d == 0:
        return 1.0
    if kind == "gauss":
        out = math.exp(-(d * d) / (2 * (-(scale * scale) / (2 * math.log(at)))))
    elif kind == "exp":
        out = math.exp(math.log(at) / scale * d)
    elif kind == "linear":
        s = scale / (1.0 - at)
        out = max(0.0, (s - d) / s)
    else:
        raise ValueError(f"unknown decay {kind!r}")
    return out if math.isfinite(out) else 0.0  # far past the scale, whatever the float range says


@dataclass(frozen=True)
class Boost:
    field: str
    equals: Any = None
    add: float | None = None
    decay: str | None = None
    origin: Any = None
    scale: Any = None
    offset: Any = 0
    at: float = 0.5
    multiply: bool = False

    def apply(self, score: float, payload: dict[str, Any] | None) -> float:
        value = (payload or {}).get(self.field)
        if self.decay is None:
            values = value if isinstance(value, list) else [value]
            return score + self.add if value is not None and self.equals in values else score
        v = number(value)
        if v is None:
            return score
        factor = decay(self.decay, v, number(self.origin), distance(self.scale), distance(self.offset) or 0.0,
                       self.at)
        return score * factor if self.multiply else score + (1.0 if self.add is None else self.add) * factor


def formula(hits: Sequence[ScoredId], boosts: Sequence[Boost]) -> list[ScoredId]:
    """Each hit rescored by the boosts in order, then re-ranked (ties by id)."""
    out = []
    for h in hits:
        s = float(h.score)
        for b in boosts:
            s = b.apply(s, h.payload)
        out.append(ScoredId(h.id, s, h.payload))
    return sorted(out, key=lambda h: (-h.score, h.id))


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb) if na and nb else 0.0


def mmr(hits: Sequence[ScoredId], vectors: dict[str, Sequence[float]], lam: float,
        limit: int | None = None) -> list[ScoredId]:
    """Maximal marginal relevance; hits without a stored vector in the space keep their order after the rest."""
    pool = [h for h in hits if h.id in vectors]
    rest = [h for h in hits if h.id not in vectors]
    if not pool:
        return list(hits)
    lo, hi = min(h.score for h in pool), max(h.score for h in pool)
    rel = {h.id: (h.score - lo) / (hi - lo) if hi > lo else 1.0 for h in pool}
    chosen: list[ScoredId] = []
    sim_to_chosen = {h.id: -math.inf for h in pool}
    left = list(pool)
    want = len(pool) if limit is None else min(limit, len(pool))
    while left and len(chosen) < want:
        def value(h: ScoredId) -> float:
            penalty = sim_to_chosen[h.id] if chosen else 0.0
            return lam * rel[h.id] - (1 - lam) * penalty

        best = max(left, key=lambda h: (value(h), -left.index(h)))
        chosen.append(ScoredId(best.id, value(best), best.payload))
        left.remove(best)
        for h in left:
            sim_to_chosen[h.id] = max(sim_to_chosen[h.id], _cosine(vectors[h.id], vectors[best.id]))
    return chosen + rest


@dataclass(frozen=True)
class Group:
    value: Any
    hits: list[ScoredId]


def group_by(hits: Sequence[ScoredId], field: str, size: int, groups: int) -> list[Group]:
    """Hits (best first) grouped by a payload field's value; groups in the order of their best hit."""
    out: dict[Any, list[ScoredId]] = {}
    for h in hits:
        value = (h.payload or {}).get(field)
        for v in (value if isinstance(value, list) else [value]):
            if v is None or isinstance(v, (dict, list)):
                continue
            key = (type(v).__name__, v)
            if key not in out:
                if len(out) >= groups:
                    continue
                out[key] = []
            if len(out[key]) < size:
                out[key].append(h)
    return [Group(value=k[1], hits=v) for k, v in out.items()]


def run_stages(pool: list[ScoredId], stages: Sequence[Any], vectors: Sequence[dict[str, Sequence[float]] | None]
               ) -> tuple[list[ScoredId], list[Group] | None, dict[str, list[StageExplanation]]]:
    """The request's stages in order over the candidates (payloads already on them; `vectors[i]`: stage i's MMR
    vectors by id): the candidates as the last stage left them, the groups of a group_by stage, and each id's score
    before and after every stage."""
    groups = None
    trail: dict[str, list[StageExplanation]] = {}
    for st, space_vectors in zip(stages, vectors):
        before = {h.id: h.score for h in pool}
        if st.formula:
            pool = formula(pool, [Boost(b.field, b.equals, b.add, b.decay, b.origin, b.scale, b.offset,
                                        b.decay_at, b.multiply) for b in st.formula.boost])
        elif st.mmr:
            pool = mmr(pool, space_vectors or {}, st.mmr.lambda_)
        else:
            groups = group_by(pool, st.group_by.field, st.group_by.size, st.group_by.groups)
        for h in pool:
            trail.setdefault(h.id, []).append(StageExplanation(stage=st.kind, before=before[h.id], after=h.score))
    return pool, groups, trail


def explain(hits: list[Hit], req: QueryRequest, merged: list[list[ScoredId]], base: dict[str, float],
            trail: dict[str, list[StageExplanation]]) -> list[Hit]:
    """Each hit's score taken apart: per prefetch its rank, raw score and contribution, then each stage."""
    parts = contributions(req.fusion.method, merged, k=req.fusion.k, weights=req.fusion.weights)
    ranks: list[dict[str, tuple[int, float]]] = [{} for _ in merged]
    for li, lst in enumerate(merged):
        for rank, h in enumerate(lst, start=1):
            ranks[li].setdefault(h.id, (rank, float(h.score)))
    out = []  # built from values computed here: model_construct skips validating them again
    for h in hits:
        pre = [PrefetchExplanation.model_construct(space=p.space, rank=ranks[li].get(h.id, (None, None))[0],
                                                   score=ranks[li].get(h.id, (None, None))[1],
                                                   contribution=parts.get(h.id, [0.0] * len(merged))[li])
               for li, p in enumerate(req.prefetch)]
        out.append(h.model_copy(update={"explain": Explanation.model_construct(
            prefetch=pre, fused=base.get(h.id, h.score), stages=trail.get(h.id, []), score=h.score)}))
    return out


def check_stages(req: QueryRequest, config: Any) -> None:
    """Stage fields must be mapped payload fields and MMR spaces vector spaces: a 422 naming the field."""
    for i, st in enumerate(req.stages):
        fields = ([(f"stages[{i}].formula.boost[{j}].field", b.field) for j, b in enumerate(st.formula.boost)]
                  if st.formula else [(f"stages[{i}].group_by.field", st.group_by.field)] if st.group_by else [])
        for where, field in fields:
            if field not in config.metadata:
                raise InvalidRequest(f"{where}: field {field!r} is not in the metadata mapping (known: "
                                     f"{', '.join(sorted(config.metadata)) or 'none'})", field=where)
        if st.mmr and st.mmr.space not in config.spaces:
            raise InvalidRequest(f"stages[{i}].mmr.space: {st.mmr.space!r} is not a vector space of "
                                 f"{config.name!r} (has {sorted(config.spaces)})", field=f"stages[{i}].mmr.space")
