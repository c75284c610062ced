"""Coarse centroids: k-means with k-means++ seeding and a bounded number of Lloyd iterations, deterministic for a
seed. Cosine and inner-product spaces are clustered on the unit sphere (spherical k-means): routing by the largest
inner product with unit centroids picks the same centroid for a vector whatever its norm, so both metrics route
alike; l2 spaces use squared euclidean distance."""
from __future__ import annotations

import numpy as np

from cluster.errors import InvalidRequest

METRICS = ("cosine", "ip", "l2")
MAX_SAMPLE = 100_000  # the bound: centroids are trained on at most this many of a collection's points
MAX_ITERATIONS = 20  # Lloyd's iterations on the warm-up subsample
WARM_PER_CENTROID = 64  # the warm-up subsample: k x this many points (16k for 256 centroids)
FINAL_ITERATIONS = 3  # then on the whole training sample: each is a 100k x k x dim product, the cost of training
INIT_PER_CENTROID = 32  # k-means++ seeds from at most k x this many points: its k passes are sequential
TOLERANCE = 1e-4  # stop when no centroid moves further than this (relative to the data's scale)
CHUNK = 16_384  # rows per block when scoring points against centroids: bounds the n x k score matrix in memory


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InvalidRequest(f"metric must be one of {list(METRICS)}, got {metric!r}", field="metric")


def prepare(vectors: np.ndarray | list, metric: str) -> np.ndarray:
    """Vectors as a 2-d float32 array in the space k-means works in: unit rows for cosine and ip (zero rows stay 0)."""
    _check_metric(metric)
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidRequest(f"vectors must be a 2-d array of rows, got shape {x.shape}", field="vectors")
    if not np.isfinite(x).all():
        raise InvalidRequest("vectors hold a NaN or an infinity", field="vectors")
    if metric != "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def scores(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Nearness of every row to every centroid, larger is nearer: inner product, or -squared distance for l2."""
    s = x @ centroids.T
    if metric == "l2":
        s = 2.0 * s - (x * x).sum(axis=1, keepdims=True) - (centroids * centroids).sum(axis=1)[None, :]
    return s


def nearest(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(index of each row's nearest centroid, its score), computed in blocks of CHUNK rows."""
    labels = np.empty(len(x), dtype=np.int64)
    best = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), CHUNK):
        s = scores(x[lo:lo + CHUNK], centroids, metric)
        labels[lo:lo + CHUNK] = s.argmax(axis=1)
        best[lo:lo + CHUNK] = s[np.arange(len(s)), labels[lo:lo + CHUNK]]
    return labels, best


def _gap(x: np.ndarray, c: np.ndarray, metric: str) -> np.ndarray:
    """A distance (>= 0) from every row of x to one centroid c, for k-means++ and empty-cluster repair."""
    if metric == "l2":
        d = x - c
        return np.einsum("ij,ij->i", d, d)
    return np.maximum(0.0, 1.0 - x @ c)


def _seed(x: np.ndarray, k: int, metric: str, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next seed drawn with probability proportional to its distance to the nearest seed so far."""
    m = min(len(x), k * INIT_PER_CENTROID)
    pool = x[np.sort(rng.choice(len(x), m, replace=False))] if m < len(x) else x
    chosen = [int(rng.integers(len(pool)))]
    gap = _gap(pool, pool[chosen[0]], metric).astype(np.float64)
    for _ in range(1, k):
        total = gap.sum()
        if total <= 0:  # every pool point sits on a seed: take the first ones not yet chosen
            i = next(j for j in range(len(pool)) if j not in set(chosen))
        else:
            i = int(np.searchsorted(np.cumsum(gap), rng.random() * total, side="right"))
            i = min(i, len(pool) - 1)
        chosen.append(i)
        gap = np.minimum(gap, _gap(pool, pool[i], metric))
    return pool[chosen].copy()


def _means(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the rows of each cluster, its count): one sort and a reduceat, not k masked passes."""
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    sums = np.zeros((k, x.shape[1]), dtype=np.float32)
    full = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[full]
    # float32 sums: a cluster holds a few hundred rows of a 100k sample, well inside float32's precision
    sums[full] = np.add.reduceat(x[order], starts, axis=0)
    return sums, counts


def train(vectors: np.ndarray | list, k: int, *, metric: str = "cosine", seed: int = 0,
          sample: int = MAX_SAMPLE, iterations: int = MAX_ITERATIONS) -> np.ndarray:
    """k centroids (k x dim float32; unit rows for cosine and ip) of `vectors`, trained on at most `sample` of them.

    The same vectors, k, metric and seed give the same centroids (the sample is the first draw of
    numpy.random.default_rng(seed): rows outside it are never read). A cluster left empty by an iteration takes the
    point furthest from its own centroid, so all k centroids stay in use."""
    _check_metric(metric)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidRequest(f"the number of centroids must be an integer >= 1, got {k!r}", field="centroids")
    if sample < k or iterations < 0:
        raise InvalidRequest(f"sample ({sample}) must be >= k ({k}) and iterations ({iterations}) >= 0")
    rng = np.random.default_rng(seed)
    raw = np.asarray(vectors)
    if raw.ndim == 2 and len(raw) > sample:  # sample before converting: a caller may hand over millions of rows
        raw = raw[np.sort(rng.choice(len(raw), sample, replace=False))]
    x = prepare(raw, metric)
    if len(x) < k:
        raise InvalidRequest(f"{k} centroids need at least {k} points to train on, got {len(x)}", field="centroids")
    c = _seed(x, k, metric, rng)
    # Most of the moving is done on a subsample (cheap); the last iterations see the whole training sample.
    warm = min(len(x), k * WARM_PER_CENTROID)
    if warm < len(x):
        c = _lloyd(x[np.sort(rng.choice(len(x), warm, replace=False))], c, metric, iterations)
    return _lloyd(x, c, metric, iterations if warm >= len(x) else min(iterations, FINAL_ITERATIONS))


def _lloyd(x: np.ndarray, c: np.ndarray, metric: str, iterations: int) -> np.ndarray:
    """Up to `iterations` rounds of assign-and-average from centroids c; stops early once none moves."""
    k = len(c)
    scale = float(np.abs(x).max()) or 1.0
    for _ in range(iterations):
        labels, best = nearest(x, c, metric)
        sums, counts = _means(x, labels, k)
        empty = np.flatnonzero(counts == 0)
        new = np.empty_like(c)
        full = counts > 0
        new[full] = sums[full] / counts[full, None]
        if len(empty):
            # the worst-served points (lowest score) each found a cluster of their own; ties by row order
            new[empty] = x[np.argsort(best, kind="stable")[:len(empty)]]
        if metric != "l2":
            norms = np.linalg.norm(new, axis=1, keepdims=True)
            new = new / np.where(norms > 0, norms, 1.0).astype(np.float32)
        shift = float(np.abs(new - c).max())
        c = new
        if shift <= TOLERANCE * scale and not len(empty):
            break
    return np.ascontiguousarray(c, dtype=np.float32)
