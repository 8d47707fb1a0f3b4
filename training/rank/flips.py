"""Verdict flips: which degraded frames the anomaly model judges differently from their clean frame,
and a gate rule calibrated to retake those frames (``rankers.quality.calibration.verdict_flips``).

A degradation matters to a line only when it changes the verdict: a good part rejected because its
frame is blurred, a defect passed because it is over-exposed. Flips happen where the clean frame's
score is near the threshold, so the gate that follows verdicts retakes a frame below its floors
(badly captured, whatever the verdict) or mildly degraded while near the threshold
(:class:`~device.ranker_input.VerdictGuard`). Its two numbers are chosen on held-out train frames
and synthetic defects, never on ``test/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from device.ranker_input import VerdictGuard
from device.runtime import Inspector
from device.scoring import NORMALIZED_THRESHOLD

MARGINS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # quality (clean spreads above the floors) a guard may cover
FLOOR_SHARES = (0.25, 0.5, 0.75, 1.0)  # share of the clean-retake budget the floors may spend
RECALL_SLACK = 0.01  # recall given up for the guard that retakes the fewest unflipped frames


def anomaly_z(insp: Inspector) -> Callable[[np.ndarray], float]:
    """An 8-bit RGB frame → its anomaly score's distance from the bundle's threshold, in units of the
    normalization's scale (> 0: judged defective). What the gate's guard compares with its band."""
    scale = insp.variant.normalization.scale

    def z(rgb: np.ndarray) -> float:
        v = insp.judge(rgb, threshold=NORMALIZED_THRESHOLD, heat="never")
        return (v.raw_score - v.raw_threshold) / scale

    return z


def flipped(z: np.ndarray, group: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Per row: a degraded frame whose verdict differs from its own clean frame's (clean rows: False)."""
    clean_z = {int(g): z[r] for r, g in enumerate(group) if kind[r] < 0}
    base = np.array([clean_z[int(g)] > 0 for g in group])
    return (kind >= 0) & ((z > 0) != base)


@dataclass(frozen=True)
class Outcome:
    """What a retake rule does to a set of frames."""

    flipped_retaken: float  # recall: share of verdict-flipping degraded frames retaken
    unflipped_retaken: float  # waste: share of degraded frames whose verdict held, retaken anyway
    clean_retaken: float  # share of clean frames retaken

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def outcome(retake: np.ndarray, flips: np.ndarray, clean: np.ndarray) -> Outcome:
    """Recall, waste and clean retakes of ``retake`` (bool per row); NaN where a set is empty."""
    degraded = ~clean
    mean = lambda m: float(np.mean(retake[m])) if m.any() else float("nan")  # noqa: E731
    return Outcome(mean(flips), mean(degraded & ~flips), mean(clean))


def guarded(quality: np.ndarray, z: np.ndarray, guard: VerdictGuard | None) -> np.ndarray:
    """The gate's retake decision per row (quality < 0, or the guard's near-threshold rule)."""
    out = quality < 0
    if guard is not None:
        out |= (quality < guard.margin) & (np.abs(z) < guard.band)
    return out


def choose_guard(quality: np.ndarray, z: np.ndarray, flips: np.ndarray, clean: np.ndarray,
                 budget: float) -> tuple[VerdictGuard, Outcome]:
    """The guard that retakes the most flipping frames while clean frames retaken stay within ``budget``.

    Among guards within ``RECALL_SLACK`` of the best recall the one retaking the fewest unflipped
    frames wins: a point of recall is not worth retaking a third of all mildly degraded frames.
    Bands are quantiles of the flipping frames' |z|; no guard (band 0) is always a candidate.
    """
    none = VerdictGuard(0.0, 0.0)
    feasible = [(none, outcome(guarded(quality, z, None), flips, clean))]
    bands = np.unique(np.quantile(np.abs(z[flips]), np.linspace(0.05, 1.0, 20))) if flips.any() else []
    for margin in MARGINS:
        for band in bands:
            g = VerdictGuard(margin, float(np.nextafter(band, np.inf)))  # the quantile's frame itself included
            o = outcome(guarded(quality, z, g), flips, clean)
            if max(o.clean_retaken, _normal_clean(quality[clean], z[clean], g)) <= budget:
                feasible.append((g, o))
    recall = lambda o: 0.0 if np.isnan(o.flipped_retaken) else o.flipped_retaken  # noqa: E731
    top = max(recall(o) for _, o in feasible)
    near = [(g, o) for g, o in feasible if recall(o) >= top - RECALL_SLACK]
    return min(near, key=lambda go: (np.nan_to_num(go[1].unflipped_retaken), -recall(go[1])))


def _normal_clean(quality: np.ndarray, z: np.ndarray, g: VerdictGuard) -> float:
    """Clean frames the guard would retake, estimated from a normal fit of their quality (as the floors'
    tail is): a few hundred clean frames, let alone a dozen, say little about a 1-in-50 tail, and
    the empirical share alone lets a guard reach into it. Quality and |z| are taken as independent."""
    from scipy.stats import norm

    sd = float(quality.std())
    if not sd > 0 or len(quality) < 2:
        return float(np.mean((quality < g.margin) & (np.abs(z) < g.band)))
    tail = float(norm.cdf((g.margin - float(quality.mean())) / sd))
    return tail * float(np.mean(np.abs(z) < g.band))


def flip_summary(quality: np.ndarray, z: np.ndarray, group: np.ndarray, kind: np.ndarray, defect: np.ndarray,
                 guard: VerdictGuard, share: float, floors_only: Outcome, chosen: Outcome,
                 target: float) -> dict[str, Any]:
    """The manifest's ``verdict_flips`` entry: the rule, the frames it was set on, and what it does there."""
    flips = flipped(z, group, kind)
    return {"rule": guard.to_dict(), "floor_budget_share": share,
            "frames": int(len(z)), "clean_frames": int(np.sum(kind < 0)),
            "defect_frames": int(np.sum(defect)), "flipped_frames": int(flips.sum()),
            "with_rule": chosen.to_dict(), "floors_only": floors_only.to_dict(),
            # False when even the floors alone retake more clean frames (synthetic defects included) than the
            # target: the gate reads some defects as bad captures, and no guard was added
            "within_target": bool(chosen.clean_retaken <= target)}
