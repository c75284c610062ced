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
