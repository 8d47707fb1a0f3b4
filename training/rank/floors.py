"""The quality gate's floors: set from held-out clean frames at a target false-retake rate."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.rank.degrade import TRAIN_GRID
from training.rank.flips import FLOOR_SHARES, RECALL_SLACK, choose_guard, flip_summary, flipped, guarded, outcome
from training.rank.pairs import QualityPool
from training.rank.recipe import QualitySpec

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Judged:
    """Held-out frames the anomaly model judged too: good and synthetic-defect images, clean and
    degraded, with the gate's int8 scores (N x families) and each row's anomaly ``z``."""

    pool: QualityPool
    scores: np.ndarray
    defect: np.ndarray  # per row: a synthetic-defect image


def _with_flips(clean_good: np.ndarray, judged: Judged, target: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Floors and a verdict guard that together retake the most verdict-flipping frames with clean
    frames retaken at most ``target``: the floors spend a share of that budget, the guard the rest."""
    p = judged.pool
    flips, clean = flipped(p.z, p.group, p.kind), p.kind < 0
    best = None
    for share in FLOOR_SHARES:
        floors, scale = family_floors(clean_good, share * target)
        quality = ((judged.scores - floors) / scale).min(1)
        guard, chosen = choose_guard(quality, p.z, flips, clean, target)
        key = (round(np.nan_to_num(chosen.flipped_retaken) / RECALL_SLACK), -np.nan_to_num(chosen.unflipped_retaken))
        if best is None or key > best[0]:
            floors_only = outcome(guarded(quality, p.z, None), flips, clean)
            best = (key, floors, scale, flip_summary(quality, p.z, p.group, p.kind, judged.defect, guard, share,
                                                     floors_only, chosen, target))
    _, floors, scale, summary = best
    if not summary["within_target"]:
        log.warning("quality gate: the floors alone retake %.1f %% of the held-out clean frames (good and synthetic "
                    "defects), above the %.1f %% target: the gate reads some defects as bad captures; no verdict guard "
                    "added (see rankers.quality.calibration.verdict_flips)",
                    100 * summary["with_rule"]["clean_retaken"], 100 * target)
    return floors, scale, summary


def floor_entry(pool: QualityPool, scores: np.ndarray, spec: QualitySpec, judged: Judged | None = None) -> dict[str, Any]:
    """The gate's manifest entry from int8 ``scores`` of the held-out ``pool``: a floor and a clean spread
    per family, how they were set, and what the gate catches per kind (the upper half of each kind's
    training strengths). With ``judged`` frames the floors follow verdict flips (and a guard retakes
    mildly degraded frames near the threshold); without, they sit at the target false-retake rate."""
    target = spec.target_false_retake_rate
    clean_good = scores[pool.kind < 0]
    if judged is None:
        floors, scale = family_floors(clean_good, target)
        method, flips = CLEAN_METHOD, None
    else:
        floors, scale, flips = _with_flips(clean_good, judged, target)
        method = FLIP_METHOD
    quality = ((scores - floors) / scale).min(1)  # the gate's quality: weakest family's margin
    clean = quality[pool.kind < 0]
    caught = {}
    for k, name in enumerate(pool.kinds):
        strong = (pool.kind == k) & (pool.level * 2 > len(TRAIN_GRID[name]))
        caught[name] = float(np.mean(quality[strong] < 0)) if strong.any() else None
    families = [{"name": n, "kinds": list(kinds), "floor": float(f), "scale": float(sd)}
                for (n, kinds), f, sd in zip(spec.columns(), floors, scale)]
    calibration = {"method": method, "target_false_retake_rate": target, "n_images": int(len(clean)),
                   "holdout_false_retake_rate": float(np.mean(clean < 0)),
                   "retake_rate_upper_half_strengths": caught}
    if flips is not None:
        calibration["verdict_flips"] = flips
    return {"floor": 0.0, "families": families, "calibration": calibration}


CLEAN_METHOD = ("per family: a quantile of held-out clean train/good frames' int8 scores, the same for every "
                "family, the largest whose union of false retakes stays at the target, and at most the normal "
                "estimate mean − z·sd of target / families; quality = the weakest family's "
                "(score − floor) / clean spread, retaken below 0")
FLIP_METHOD = ("verdict flips: held-out train/good frames the anomaly model never saw, and synthetic defects painted "
               "on them, clean and degraded at training strengths, judged by the bundle's int8 anomaly model; "
               "floors as the clean method with a share of the false-retake target, and a guard (margin, band) "
               "that also retakes frames whose quality is below margin while the anomaly score is within band "
               "of the threshold (normalization scale units); share, margin and band chosen to retake the most "
               "frames whose verdict the degradation flipped (within 0.01 of that, the fewest unflipped frames), "
               "with clean frames retaken at most the target")
