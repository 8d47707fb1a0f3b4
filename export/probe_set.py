"""Which probe images a bundle carries: a seeded sample of the calibration hold-out and of the
synthetic defects, trimmed to the recipe's byte budget (``export.probe_max_mb``) and to its
start-up time budget on a Pi 4 (``export.probe_max_pi4_s``, an ESTIMATE from the model's MACs).

Large inputs make large probes (a 608x256 colour probe is ~115 KB lossless) and slow model runs
(1120x448: ~290 ms each on a Pi 4); rather than a bundle that grows past what a station should
download and check at start-up, both kinds shrink in proportion, never below the check's minimum
of 4 good and 1 defect.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from device.macs import pi_model_ms
from device.probes import encoded_bytes
from device.selfcheck import startup_runs
from training.recipe import ExportSpec

log = logging.getLogger(__name__)

MIN_GOOD, MIN_DEFECT = 4, 1
ZIP_ENTRY_BYTES = 256  # the .npz's per-image header and directory entry, rounded up


def _shrunk(n_good: int, n_defect: int, fits: Callable[[int, int], bool]) -> tuple[int, int]:
    """The largest counts, both shrunk in proportion, that ``fits``; the minimum counts when none do."""
    lo_g, lo_d = min(n_good, MIN_GOOD), min(n_defect, MIN_DEFECT)
    for frac in np.linspace(1.0, 0.0, 401):
        n_g = max(lo_g, math.ceil(n_good * frac - 1e-9))
        n_d = max(lo_d, math.ceil(n_defect * frac - 1e-9))
        if fits(n_g, n_d):
            return n_g, n_d
    return lo_g, lo_d


def within_budget(good: list[int], defect: list[int], budget: int) -> tuple[int, int]:
    """How many of each list of encoded sizes (prefixes, shrunk in proportion) fit ``budget`` bytes;
    the minimum counts when even they do not."""
    cg = np.r_[0, np.cumsum(np.asarray(good, np.int64) + ZIP_ENTRY_BYTES)]
    cd = np.r_[0, np.cumsum(np.asarray(defect, np.int64) + ZIP_ENTRY_BYTES)]
    return _shrunk(len(good), len(defect), lambda g, d: cg[g] + cd[d] <= budget)


def within_check_time(n_good: int, n_defect: int, n_int8: int, gmacs: float | None, spec: ExportSpec
                      ) -> tuple[int, int]:
    """How many probes keep the start-up check's Pi 4 ESTIMATE within ``export.probe_max_pi4_s``
    (all of them without a MAC count); says so when it trims, warns when the minimum is over."""
    if not gmacs:
        return n_good, n_defect
    ms = pi_model_ms(gmacs, "Raspberry Pi 4")
    n_g, n_d = _shrunk(n_good, n_defect, lambda g, d: startup_runs(g, d, n_int8) * ms <= spec.probe_max_pi4_s * 1e3)
    est = startup_runs(n_g, n_d, n_int8) * ms / 1e3
    if est > spec.probe_max_pi4_s:
        log.warning("probe set: even %d good and %d defect probes make the start-up check ~%.1f s on a Pi 4 "
                    "(ESTIMATE), over export.probe_max_pi4_s %.1f", n_g, n_d, est, spec.probe_max_pi4_s)
    elif (n_g, n_d) != (n_good, n_defect):
        log.info("probe set: %d good and %d defect probes of %d and %d keep the start-up check within "
                 "export.probe_max_pi4_s %.1f (~%.1f s on a Pi 4, ESTIMATE)", n_g, n_d, n_good, n_defect,
                 spec.probe_max_pi4_s, est)
    return n_g, n_d


def subset(images: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """``n`` of ``images``, a seeded sample kept in their order (the whole list when n covers it)."""
    if n >= len(images):
        return images
    keep = np.sort(np.random.default_rng(seed + 7919).permutation(len(images))[:n])
    return [images[i] for i in keep]


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
