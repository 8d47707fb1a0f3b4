"""Parity gate: the int8 model must rank and judge images like the fp32 one, or export fails."""
from __future__ import annotations

from device.errors import KenpinError
from device.parity import Parity, compare

__all__ = ["Parity", "ParityError", "compare", "pick_best"]


class ParityError(KenpinError):
    """int8 drifted from fp32 beyond the recipe's tolerance."""


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
