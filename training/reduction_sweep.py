"""``kenpin tune --reduction-dims``: each reduction dim and method judged on validation, from one embedding pass."""
from __future__ import annotations

import numpy as np

from training.coreset import greedy_coreset
from training.discriminant import PaintedBank, ResidualMoments, fit_discriminant, residual_moments
from training.fit import fit_maps, flatten_patches
from training.reduction import Reduction, fit_reduction, search_ms

# (whiten, residual) of the PCA methods; "discriminant" fits on painted bank images instead
METHODS = {"pca": (False, False), "whiten": (True, False), "residual": (False, True)}


def _reduction(bank_maps: np.ndarray, dim: int, method: str, seed: int, moments: ResidualMoments | None,
               ridge: float) -> Reduction:
    if method == "discriminant":
        if moments is None:
            raise ValueError("the discriminant method needs the painted bank images")
        return fit_discriminant(moments, dim, ridge)
    whiten, residual = METHODS[method]
    return fit_reduction(flatten_patches(bank_maps), dim, whiten, seed, residual)


def sweep(maps: tuple[np.ndarray, np.ndarray, np.ndarray], dims: list[int], coreset_sizes: tuple[int, ...],
          texture: bool, target_frr: float, seed: int, methods: tuple[str, ...] = ("pca",),
          painted: PaintedBank | None = None, ridges: tuple[float, ...] = (1.0,)) -> list[dict[str, object]]:
    """Validation figures of each reduction dim (0 = full), method and bank size, from one embedding pass.

    ``maps``: full-dimension feature maps of the bank, held-out good and synthetic-defect images;
    ``painted``: the bank images with a defect each that the discriminant method fits on (one row
    per ``ridges`` value). Each row gets its own reduction, coreset, threshold and fusion, as a bundle
    would. The greedy coreset picks in order, so one selection of the largest size gives every
    smaller one as its prefix: the same bank a recipe of that ``coreset_size`` would build."""
    bank_maps, hold_maps, syn_maps = maps
    combos = [(0, "full", 0.0)] if 0 in dims else []
    combos += [(d, m, r) for d in dims if d for m in methods for r in (ridges if m == "discriminant" else (0.0,))]
    moments = residual_moments(bank_maps, painted, seed) if painted is not None and "discriminant" in methods else None
    rows: list[dict[str, object]] = []
    for dim, method, ridge in combos:
        b, h, s, kept = bank_maps, hold_maps, syn_maps, 1.0
        if dim:
            red = _reduction(bank_maps, dim, method, seed, moments, ridge)
            b, h, s, kept = red.apply(bank_maps), red.apply(hold_maps), red.apply(syn_maps), red.explained
        order = greedy_coreset(flatten_patches(b), max(coreset_sizes), 128, seed)
        for size in sorted(coreset_sizes):
            v = fit_maps(b, order[:size], h, s, target_frr, texture)
            rows.append({"dim": int(b.shape[1]), "method": method + (f" ridge {ridge:g}" if ridge else ""),
                         "bank": int(len(v.bank)), "explained_variance": float(kept),
                         "synthetic_auroc": v.synthetic_auroc, "synthetic_escape_rate": v.synthetic_escape_rate,
                         "search_ms": search_ms(v.bank, flatten_patches(h[:1]))})
    return rows
