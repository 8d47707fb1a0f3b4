"""The quality gate's floors: set from held-out clean frames at a target false-retake rate."""
from __future__ import annotations

from typing import Any

import numpy as np

from training.rank.degrade import TRAIN_GRID
from training.rank.pairs import QualityPool
from training.rank.recipe import QualitySpec


def family_floors(clean: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of held-out clean scores (N x F): floors and clean spreads.

    The families' false retakes add up, so each family gets the same share q of the target, the
    largest whose union stays at the target on these frames. A held-out set of a few dozen
    frames says little about a 1-in-200 tail, so no floor is set above the normal estimate of
    that quantile either (mean − z·sd at target / F): with few frames the estimate is the safer one.
    """
    from scipy.stats import norm

    n, f = clean.shape
    scale = clean.std(0)
    scale[~(scale > 0)] = 1.0
    best = clean.min(0)  # no held-out clean frame retaken
    for q in np.linspace(target / f, target, 40):
        floors = np.quantile(clean, q, axis=0, method="lower")
        if np.mean((clean < floors).any(1)) <= target:
            best = floors
    normal = clean.mean(0) + norm.ppf(target / f) * scale
    return np.minimum(best, normal), scale


def floor_entry(pool: QualityPool, scores: np.ndarray, spec: QualitySpec) -> dict[str, Any]:
    """The gate's manifest entry from int8 ``scores`` of the held-out ``pool``: a floor and a clean spread
    per family at the target false-retake rate, how they were set, and what the gate catches per kind
    (the upper half of each kind's training strengths)."""
    floors, scale = family_floors(scores[pool.kind < 0], spec.target_false_retake_rate)
    quality = ((scores - floors) / scale).min(1)  # the gate's quality: weakest family's margin
    clean = quality[pool.kind < 0]
    caught = {}
    for k, name in enumerate(pool.kinds):
        strong = (pool.kind == k) & (pool.level * 2 > len(TRAIN_GRID[name]))
        caught[name] = float(np.mean(quality[strong] < 0)) if strong.any() else None
    families = [{"name": n, "kinds": list(kinds), "floor": float(f), "scale": float(sd)}
                for (n, kinds), f, sd in zip(spec.columns(), floors, scale)]
    return {"floor": 0.0, "families": families, "calibration": {
        "method": "per family: a quantile of held-out clean train/good frames' int8 scores, the same for every "
                  "family, the largest whose union of false retakes stays at the target, and at most the normal "
                  "estimate mean − z·sd of target / families; quality = the weakest family's "
                  "(score − floor) / clean spread, retaken below 0",
        "target_false_retake_rate": spec.target_false_retake_rate, "n_images": int(len(clean)),
        "holdout_false_retake_rate": float(np.mean(clean < 0)),
        "retake_rate_upper_half_strengths": caught}}
