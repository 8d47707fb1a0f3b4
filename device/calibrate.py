"""Threshold and score normalization from held-out good images only.

The images were kept out of the reference bank: scores of bank images against themselves are
near zero and would put the threshold far too low (false alarms explode on later images).
"""
from __future__ import annotations

import math

import numpy as np

from device.scoring import Normalization

# The median good part shows as 0.1 on the operator's 0–1 scale (threshold at 0.5).
_MEDIAN_GOOD_NORMALIZED = 0.1


def calibrate(good_scores: np.ndarray, target_false_reject_rate: float) -> Normalization:
    """Threshold at the (1 - target) quantile of held-out good scores, plus the logistic scale."""
    scores = np.asarray(good_scores, dtype=np.float64)
    threshold = float(np.quantile(scores, 1.0 - target_false_reject_rate, method="linear"))
    spread = threshold - float(np.median(scores))
    # Degenerate spreads (all-equal scores) still need a positive scale.
    spread = max(spread, 1e-6 * max(abs(threshold), 1.0))
    scale = spread / math.log((1 - _MEDIAN_GOOD_NORMALIZED) / _MEDIAN_GOOD_NORMALIZED)
    return Normalization(threshold, scale)
