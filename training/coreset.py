"""Greedy (k-center) coreset subsampling of the reference bank.

Random subsampling of patches collapses accuracy (0.75 AUROC at 2 % on magnetic tile); the greedy
coreset keeps the rare-but-normal patches that random picks drop, so a small bank still covers
the good distribution. Selection runs on a random projection, as in PatchCore, to be fast.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm


def greedy_coreset(features: np.ndarray, size: int, projection_dim: int = 128, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` rows of ``features`` (NxC) chosen by farthest-point selection."""
    n = features.shape[0]
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float32)
    if projection_dim and projection_dim < x.shape[1]:
        proj = rng.standard_normal((x.shape[1], projection_dim), dtype=np.float32) / np.sqrt(projection_dim)
        x = x @ proj
    sq = np.einsum("ij,ij->i", x, x)
    # Squared distances through one matrix-vector product per pick (|a|² - 2ab + |b|²): BLAS-bound.
    chosen = [int(rng.integers(n))]
    nearest = sq - 2.0 * (x @ x[chosen[0]]) + sq[chosen[0]]
    for _ in tqdm(range(size - 1), desc="coreset", unit="pt", leave=False, mininterval=1.0):
        idx = int(np.argmax(nearest))
        chosen.append(idx)
        np.minimum(nearest, sq - 2.0 * (x @ x[idx]) + sq[idx], out=nearest)
    return np.asarray(chosen, dtype=np.int64)
