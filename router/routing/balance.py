"""Balanced assignment of centroids to shards: every shard's size (the points of its centroids, summed) within
+-tolerance of the mean, and near centroids on the same shard wherever that costs no balance, so that a query's
nearest centroids sit on few shards.

How: shard centres start far apart (farthest-first from the heaviest centroid) and move as in k-means over the
centroids, each round assigning centroids heaviest first to the nearest shard with room (a capacity a little over
the mean); a repair pass then moves single centroids (or swaps two) from the fullest to the emptiest shards until
all lie within half the tolerance (or nothing helps), choosing among the moves that help balance most the one that
moves a centroid least far from its shard: half, so that points written after training have room to drift.
Deterministic: no randomness, ties go to the lower index."""
from __future__ import annotations

import numpy as np

from cluster.errors import InvalidRequest
from router.routing.kmeans import prepare, scores

TOLERANCE = 0.2  # the bound: shard sizes within +-20% of the mean
AIM = 0.5  # greedy rounds fill a shard to mean x (1 + AIM x tolerance), and the repair aims at +-AIM x tolerance
ROUNDS = 10  # capacitated k-means rounds over the centroids
GOOD_ENOUGH = 0.5  # a repair step picks the nearest move among those doing at least this share of the best one


def assign(centroids: np.ndarray | list, sizes: np.ndarray | list, shards: int, *, metric: str = "cosine",
           tolerance: float = TOLERANCE) -> np.ndarray:
    """The shard (0..shards-1) of each centroid. `sizes`: how many points each centroid holds. Best effort when no
    assignment can meet the tolerance (one centroid alone heavier than mean x (1 + tolerance)): check with spread()."""
    c = prepare(centroids, metric).astype(np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    if w.shape != (len(c),) or not np.isfinite(w).all() or (w < 0).any():
        raise InvalidRequest(f"sizes must be {len(c)} finite counts >= 0, one per centroid", field="sizes")
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InvalidRequest(f"shards must be an integer >= 1, got {shards!r}", field="shards")
    if not 0 < tolerance < 1:
        raise InvalidRequest(f"tolerance must be in (0, 1), got {tolerance!r}", field="tolerance")
    if shards == 1 or len(c) == 0:
        return np.zeros(len(c), dtype=np.int64)
    if w.sum() <= 0:
        w = np.ones(len(c))  # no points yet: balance the centroids themselves, so every shard gets some
    target = w.sum() / shards
    centres = _spread_out(c, w, shards, metric)
    owner = np.full(len(c), -1, dtype=np.int64)
    for _ in range(ROUNDS):
        new = _greedy(c, w, centres, target * (1 + AIM * tolerance), metric)
        if (new == owner).all():
            break
        owner = new
        centres = _centres(c, w, owner, centres, metric)
    return _repair(c, w, owner, centres, target, tolerance, metric)


def spread(sizes: np.ndarray | list, owner: np.ndarray | list, shards: int) -> float:
    """The largest relative distance of a shard's size from the mean (0.2 = some shard is 20% off)."""
    load = np.bincount(np.asarray(owner, dtype=np.int64), weights=np.asarray(sizes, dtype=np.float64),
                       minlength=shards)
    mean = load.sum() / shards
    return float(np.abs(load - mean).max() / mean) if mean > 0 else 0.0


def _gaps(c: np.ndarray, centres: np.ndarray, metric: str) -> np.ndarray:
    """Distance (smaller is nearer) from every centroid to every shard centre."""
    return -scores(c, centres, metric)


def _spread_out(c: np.ndarray, w: np.ndarray, shards: int, metric: str) -> np.ndarray:
    chosen = [int(np.argmax(w))]
    if shards >= len(c):
        return c[list(range(len(c))) + [chosen[0]] * (shards - len(c))].copy()
    gap = _gaps(c, c[chosen], metric)[:, 0]
    for _ in range(1, shards):
        gap[chosen] = -np.inf
        i = int(np.argmax(gap))
        chosen.append(i)
        gap = np.minimum(gap, _gaps(c, c[[i]], metric)[:, 0])
    return c[chosen].copy()


def _greedy(c: np.ndarray, w: np.ndarray, centres: np.ndarray, cap: float, metric: str) -> np.ndarray:
    gaps = _gaps(c, centres, metric)
    load = np.zeros(len(centres))
    owner = np.empty(len(c), dtype=np.int64)
    for i in np.argsort(-w, kind="stable"):
        fits = load + w[i] <= cap
        s = int(np.argmin(np.where(fits, gaps[i], np.inf))) if fits.any() else int(np.argmin(load))
        owner[i] = s
        load[s] += w[i]
    return owner


def _centres(c: np.ndarray, w: np.ndarray, owner: np.ndarray, old: np.ndarray, metric: str) -> np.ndarray:
    out = old.copy()
    for s in range(len(old)):
        mine = owner == s
        if mine.any():
            # a centroid's weight is its size (plus one, so that empty centroids still pull their shard)
            m = ((w[mine] + 1.0)[:, None] * c[mine]).sum(axis=0)
            if metric != "l2":
                n = np.linalg.norm(m)
                m = m / n if n > 0 else old[s]
            out[s] = m / (w[mine] + 1.0).sum() if metric == "l2" else m
    return out


def _penalty(load: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """How far each shard's size lies outside [lo, hi], squared (0 inside)."""
    return np.maximum(0.0, load - hi) ** 2 + np.maximum(0.0, lo - load) ** 2


def _repair(c: np.ndarray, w: np.ndarray, owner: np.ndarray, centres: np.ndarray, target: float,
            tolerance: float, metric: str) -> np.ndarray:
    owner = owner.copy()
    shards = len(centres)
    # aim at half the tolerance: points written after training drift the sizes, so leave them room to
    lo, hi = target * (1 - AIM * tolerance), target * (1 + AIM * tolerance)
    for _ in range(4 * len(c) + shards):
        load = np.bincount(owner, weights=w, minlength=shards)
        if load.max() <= hi and load.min() >= lo:
            break
        centres = _centres(c, w, owner, centres, metric)
        step = _best_move(c, w, owner, load, centres, lo, hi, metric)
        if step is None:
            step = _best_swap(w, owner, load, lo, hi)
        if step is None:
            break  # nothing helps: a centroid alone is heavier than the band allows
        for i, s in step:
            owner[i] = s
    return owner


def _best_move(c, w, owner, load, centres, lo, hi, metric) -> list[tuple[int, int]] | None:
    """The move of one centroid (out of the fullest shard, or into the emptiest) that helps balance, nearest first."""
    full, empty = int(np.argmax(load)), int(np.argmin(load))
    base = _penalty(load, lo, hi)
    gaps = _gaps(c, centres, metric)
    cand_i, cand_s = [], []
    for i in np.flatnonzero(owner == full):
        for s in range(len(load)):
            if s != full:
                cand_i.append(i)
                cand_s.append(s)
    for i in np.flatnonzero(owner != empty):
        if owner[i] != full:
            cand_i.append(i)
            cand_s.append(empty)
    if not cand_i:
        return None
    i, s = np.array(cand_i), np.array(cand_s)
    src = owner[i]
    gain = (base[src] + base[s] - _penalty(load[src] - w[i], lo, hi) - _penalty(load[s] + w[i], lo, hi))
    if gain.max() <= 1e-9 * max(1.0, base.sum()):
        return None
    ok = gain >= GOOD_ENOUGH * gain.max()
    cost = np.where(ok, gaps[i, s] - gaps[i, src], np.inf)  # how much further from its shard's centre it goes
    j = int(np.argmin(cost))
    return [(int(i[j]), int(s[j]))]


def _best_swap(w, owner, load, lo, hi) -> list[tuple[int, int]] | None:
    """Swap a centroid of the fullest shard for a lighter one of the emptiest, the swap that helps balance most."""
    full, empty = int(np.argmax(load)), int(np.argmin(load))
    a, b = np.flatnonzero(owner == full), np.flatnonzero(owner == empty)
    if not len(a) or not len(b):
        return None
    delta = w[a][:, None] - w[b][None, :]  # what the full shard gives minus what it takes
    before = _penalty(load[full], lo, hi) + _penalty(load[empty], lo, hi)
    after = _penalty(load[full] - delta, lo, hi) + _penalty(load[empty] + delta, lo, hi)
    gain = before - after
    if gain.max() <= 1e-9 * max(1.0, before):
        return None
    x, y = np.unravel_index(int(np.argmax(gain)), gain.shape)
    return [(int(a[x]), empty), (int(b[y]), full)]
