"""Parity gate: the int8 model must rank and judge images like the fp32 one, or export fails."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from device.errors import KenpinError


class ParityError(KenpinError):
    """int8 drifted from fp32 beyond the recipe's tolerance."""


@dataclass(frozen=True)
class Parity:
    """fp32 vs int8 agreement on the same real images (normalized 0–1 scores)."""

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


def compare(method: str, fp32: np.ndarray, int8: np.ndarray) -> Parity:
    """Agreement of two normalized score vectors for the same images."""
    diff = np.abs(np.asarray(fp32) - np.asarray(int8))
    rho = float(spearmanr(fp32, int8).statistic)
    agree = float(np.mean((np.asarray(fp32) > 0.5) == (np.asarray(int8) > 0.5)))
    return Parity(method, len(diff), rho, float(diff.mean()), float(diff.max()), agree)


def pick_best(results: list[Parity], min_spearman: float, max_mean_abs_diff: float) -> Parity:
    """The calibration method whose int8 model agrees best with fp32; ParityError if none is close enough."""
    passing = [r for r in results if r.passes(min_spearman, max_mean_abs_diff)]
    if not passing:
        detail = "; ".join(f"{r.method}: spearman {r.spearman:.3f}, mean |Δscore| {r.mean_abs_diff:.3f}" for r in results)
        raise ParityError(
            f"int8 export drifts from fp32 beyond tolerance (need spearman ≥ {min_spearman}, "
            f"mean |Δscore| ≤ {max_mean_abs_diff}): {detail}"
        )
    return max(passing, key=lambda r: (r.spearman, -r.mean_abs_diff))
