"""Which probe images a bundle carries: a seeded sample of the calibration hold-out and of the
synthetic defects, trimmed to the recipe's byte budget (``export.probe_max_mb``).

Large inputs make large probes (a 608x256 colour probe is ~115 KB lossless); rather than a bundle
that grows past what a station should download and check at start-up, both kinds shrink in
proportion, never below the check's minimum of 4 good and 1 defect.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from device.probes import encoded_bytes
from training.recipe import ExportSpec

log = logging.getLogger(__name__)

MIN_GOOD, MIN_DEFECT = 4, 1
ZIP_ENTRY_BYTES = 256  # the .npz's per-image header and directory entry, rounded up


def within_budget(good: list[int], defect: list[int], budget: int) -> tuple[int, int]:
    """How many of each list (prefixes, shrunk in proportion) fit ``budget`` bytes; the minimum
    counts when even they do not."""
    cg = np.r_[0, np.cumsum(np.asarray(good, np.int64) + ZIP_ENTRY_BYTES)]
    cd = np.r_[0, np.cumsum(np.asarray(defect, np.int64) + ZIP_ENTRY_BYTES)]
    lo_g, lo_d = min(len(good), MIN_GOOD), min(len(defect), MIN_DEFECT)
    for frac in np.linspace(1.0, 0.0, 401):
        n_g = max(lo_g, math.ceil(len(good) * frac - 1e-9))
        n_d = max(lo_d, math.ceil(len(defect) * frac - 1e-9))
        if cg[n_g] + cd[n_d] <= budget:
            return n_g, n_d
    return lo_g, lo_d


def choose_probes(holdout: list[np.ndarray], synthetic: list[np.ndarray], spec: ExportSpec, seed: int,
                  resize: Callable[[np.ndarray], np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The good and defect probes at the model's input size, in file order, within the byte budget."""
    rng = np.random.default_rng(seed + 104729)
    gi = rng.permutation(len(holdout))[: spec.probe_good]
    di = rng.permutation(len(synthetic))[: spec.probe_defects]
    good, bad = [resize(holdout[i]) for i in gi], [resize(synthetic[i]) for i in di]
    budget = int(spec.probe_max_mb * 1e6)
    gb, db = [encoded_bytes(im) for im in good], [encoded_bytes(im) for im in bad]
    n_g, n_d = within_budget(gb, db, budget)
    used = sum(gb[:n_g]) + sum(db[:n_d])
    if used > budget:
        log.warning("probe set: even %d good and %d defect probes take %.2f MB, over export.probe_max_mb %.2f",
                    n_g, n_d, used / 1e6, spec.probe_max_mb)
    elif (n_g, n_d) != (len(good), len(bad)):
        log.info("probe set: %d good and %d defect probes of %d and %d fit export.probe_max_mb %.2f (%.2f MB)",
                 n_g, n_d, len(good), len(bad), spec.probe_max_mb, used / 1e6)
    # sorted by source index: the order the images were listed in, as before trimming existed
    return [good[k] for k in np.argsort(gi[:n_g])], [bad[k] for k in np.argsort(di[:n_d])]
