"""Agreement of a variant's scores with the fp32 reference on the same images.

The export's parity gate and the station's own check judge a variant by this one measure, so a
variant the export accepted is held to the same rule on the CPU that runs it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from device.scoring import NORMALIZED_THRESHOLD


@dataclass(frozen=True)
class Parity:
    """Reference (fp32) vs variant agreement on the same images (normalized 0–1 scores)."""

    method: str
    n_images: int
    spearman: float
    mean_abs_diff: float
    max_abs_diff: float
    verdict_agreement: float

    def passes(self, min_spearman: float, max_mean_abs_diff: float) -> bool:
        return self.spearman >= min_spearman and self.mean_abs_diff <= max_mean_abs_diff

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / denom) if denom > 0 else float("nan")


def compare(method: str, reference: np.ndarray, variant: np.ndarray) -> Parity:
    """Agreement of two normalized score vectors for the same images."""
    ref, var = np.asarray(reference, np.float64), np.asarray(variant, np.float64)
    diff = np.abs(ref - var)
    agree = float(np.mean((ref > NORMALIZED_THRESHOLD) == (var > NORMALIZED_THRESHOLD)))
    return Parity(method, len(diff), spearman(ref, var), float(diff.mean()), float(diff.max()), agree)
