"""Anomaly scoring: distance of each patch embedding to its nearest reference embedding.

This is the scoring math of the runtime contract; training computes its scores with these same
functions, so a bundle scores an image exactly as the training side did.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# GEMM output rows per chunk: bounds the temporary (rows x bank) matrix on big frames.
_CHUNK_ROWS = 2048


def patches_from_map(feature_map: np.ndarray) -> np.ndarray:
    """1xCxhxw (or Cxhxw) embedder output → (h*w)xC float32 patch embeddings, row-major."""
    fmap = feature_map[0] if feature_map.ndim == 4 else feature_map
    c = fmap.shape[0]
    return np.ascontiguousarray(fmap.reshape(c, -1).T, dtype=np.float32)


class NearestNeighbourScorer:
    """Euclidean distance from patches to the nearest row of a reference bank.

    ``|a-b|² = |a|² - 2a·b + |b|²`` with the bank's norms and ``-2·bankᵀ`` precomputed turns the
    search into one BLAS matrix product per frame, which keeps it below the model's own cost.
    """

    def __init__(self, bank: np.ndarray) -> None:
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"reference bank must be a non-empty 2-D array, got shape {bank.shape}")
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.dim = bank.shape[1]
        self.size = bank.shape[0]
        self._bank_sq = np.einsum("ij,ij->i", bank, bank)
        self._bank_m2t = np.ascontiguousarray(-2.0 * bank.T)

    def distances(self, patches: np.ndarray) -> np.ndarray:
        """Nearest-reference distance for each row of ``patches`` (PxC) → P float32."""
        if patches.shape[1] != self.dim:
            raise ValueError(f"patch dimension {patches.shape[1]} does not match the bank's {self.dim}")
        out = np.empty(patches.shape[0], dtype=np.float32)
        for start in range(0, patches.shape[0], _CHUNK_ROWS):
            p = patches[start : start + _CHUNK_ROWS]
            d2 = p @ self._bank_m2t
            d2 += self._bank_sq
            nearest = d2.min(axis=1) + np.einsum("ij,ij->i", p, p)
            out[start : start + len(p)] = np.sqrt(np.maximum(nearest, 0.0))
        return out


def image_score(patch_scores: np.ndarray) -> float:
    """Image anomaly score: the worst patch (a defect can be a single patch)."""
    return float(patch_scores.max())


def heatmap(patch_scores: np.ndarray, grid: tuple[int, int], size: tuple[int, int], sigma: float) -> np.ndarray:
    """Patch scores on a (h, w) grid → float32 map of ``size`` (width, height), Gaussian-smoothed."""
    h, w = grid
    m = cv2.resize(patch_scores.reshape(h, w).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma)
    return m


@dataclass(frozen=True)
class Normalization:
    """Maps raw scores to 0–1 for operators, with the calibrated threshold at exactly 0.5.

    A logistic curve centred on the threshold, its width the spread of good calibration scores:
    monotone (ranking and AUROC unchanged), and a score of 0.9 means the same distance past
    the threshold on every bundle.
    """

    threshold: float
    scale: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or not self.scale > 0:
            raise ValueError(f"normalization needs a finite threshold and scale > 0, got {self}")

    def __call__(self, raw: float | np.ndarray) -> float | np.ndarray:
        z = np.clip((np.asarray(raw, dtype=np.float64) - self.threshold) / self.scale, -60, 60)
        out = 1.0 / (1.0 + np.exp(-z))
        return float(out) if np.ndim(out) == 0 else out


NORMALIZED_THRESHOLD = 0.5
