"""Pixel-level AUPRO, the MVTec AD localisation metric (Bergmann et al., 2021).

Per-region overlap (PRO): for each connected defect region of the ground truth, the share of its
pixels above a threshold; averaged over regions, so a small pit counts as much as a large crack.
The curve of PRO against the false-positive rate on defect-free pixels is integrated from 0 to
``max_fpr`` (0.3 by convention) and divided by ``max_fpr``: 1 is perfect, ~0.15 is chance.
"""
from __future__ import annotations

import cv2
import numpy as np

MAX_FPR = 0.3


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected defect regions of a 0/1 mask, labelled 1..n (0: background), and n."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels, n - 1


def aupro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = MAX_FPR) -> float | None:
    """Normalized area under the PRO curve up to ``max_fpr``; None without defect regions or
    without defect-free pixels. ``maps`` and ``masks`` pair up image by image, same shapes."""
    scores, weights_fp, weights_pro = [], [], []
    region_sizes: list[int] = []
    for amap, mask in zip(maps, masks):
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map {amap.shape} and mask {mask.shape} differ in shape")
        labels, n = _regions(mask > 0)
        scores.append(amap.ravel().astype(np.float64))
        flat = labels.ravel()
        weights_fp.append((flat == 0).astype(np.float64))
        # region ids offset so each image's regions stay distinct; -1 = background
        weights_pro.append(np.where(flat > 0, flat - 1 + len(region_sizes), -1))
        region_sizes += [int(c) for c in np.bincount(flat, minlength=n + 1)[1:]]
    if not region_sizes:
        return None
    s = np.concatenate(scores)
    neg = np.concatenate(weights_fp)
    region = np.concatenate(weights_pro)
    n_neg = neg.sum()
    if n_neg == 0:
        return None
    # each pixel's contribution when the threshold drops below its score
    per_region = 1.0 / (np.asarray(region_sizes, np.float64) * len(region_sizes))
    pro_step = np.where(region >= 0, per_region[np.maximum(region, 0)], 0.0)
    order = np.argsort(-s, kind="stable")
    s, fpr, pro = s[order], np.cumsum(neg[order]) / n_neg, np.cumsum(pro_step[order])
    # one point per distinct threshold (ties move together), starting at (0, 0)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    keep = fpr <= max_fpr
    cut_pro = np.interp(max_fpr, fpr, pro)  # the curve at exactly max_fpr
    x, y = np.r_[fpr[keep], max_fpr], np.r_[pro[keep], cut_pro]
    return float(np.trapezoid(y, x) / max_fpr)
