"""Synthetic data for tests and benchmarks: Gaussian mixtures (uniform random vectors make ANN meaningless)."""
from __future__ import annotations

import numpy as np

DEFAULT_CLUSTERS = 64
DEFAULT_SPREAD = 0.35


def _sample(n: int, dim: int, centre_seed: int, sample_seed: int, clusters: int, spread: float) -> np.ndarray:
    centres = np.random.default_rng(centre_seed).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(sample_seed)
    x = centres[rng.integers(0, clusters, size=n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def gaussian_mixture(n: int, dim: int, *, seed: int = 0, clusters: int = DEFAULT_CLUSTERS,
                     spread: float = DEFAULT_SPREAD) -> np.ndarray:
    """`n` unit float32 vectors around `clusters` random centres fixed by `seed`."""
    return _sample(n, dim, seed, seed, clusters, spread)


def query_vectors(n: int, dim: int, *, seed: int, base_seed: int = 0, clusters: int = DEFAULT_CLUSTERS,
                  spread: float = DEFAULT_SPREAD) -> np.ndarray:
    """Queries from the same mixture as `gaussian_mixture(seed=base_seed)`, but other points."""
    return _sample(n, dim, base_seed, seed + 10_000, clusters, spread)


def gaussian_mixture_chunks(n: int, dim: int, *, seed: int = 0, chunk: int = 50_000,
                            clusters: int = DEFAULT_CLUSTERS, spread: float = DEFAULT_SPREAD):
    """`gaussian_mixture`'s distribution (the same centres) made `chunk` rows at a time, so a million points never
    sit in memory at once (one call at 1M x 384 would hold ~3 GiB of float64 noise). Yields (start, rows); each
    chunk has its own sample seed, so the points differ from one `gaussian_mixture` call's but come out the same
    on every run. `query_vectors(base_seed=seed)` draws queries from the same mixture."""
    for k, start in enumerate(range(0, n, chunk)):
        yield start, _sample(min(chunk, n - start), dim, seed, seed + 1_000_000 + k, clusters, spread)
