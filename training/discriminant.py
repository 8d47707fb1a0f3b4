"""A compact embedding fitted for the task: the directions where defects leave their nearest good patch.

PCA keeps the directions good patches vary in most and drops the low-variance ones, where a defect
often shows. The image score is a patch's distance to its nearest good patch, so this reduction is
fitted on those residuals instead: synthetic defects painted on some bank images give the defect
residuals, the same images' own patches (matched against the rest of the bank) the good ones, and
the kept directions span those with the most defect residual energy per unit of good residual
energy — the generalized eigenproblem ``S_d v = λ (S_g + ridge·σ̄²·I) v``. Linear, so it is the
same 1x1 convolution a PCA is (``training.reduction.Reduction``), and the held-out good images the
threshold and validation use are never painted or fitted on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from device.errors import KenpinError
from device.preprocess import Preprocess
from training.area_defects import validation_defect
from training.coreset import greedy_coreset
from training.fit import EmbedFn, embed_all, flatten_patches
from training.metric.batches import normalize
from training.metric.pair_sampling import patch_labels
from training.reduction import Reduction, check_dim

FIT_IMAGES = 48  # bank images painted with one synthetic defect each
REF_ROWS = 4000  # good patches (a coreset of the other bank images) the residuals are taken against
GOOD_ROWS = 20_000  # good residuals sampled
POOL_ROWS = 60_000  # other bank patches the reference coreset is chosen from (a seeded sample: speed)
_CHUNK = 4096


@dataclass(frozen=True)
class PaintedBank:
    """Feature maps of bank images with a synthetic defect each, per-patch labels, and their sources."""

    maps: np.ndarray  # N x C x h x w
    labels: np.ndarray  # N*h*w: 1 defect, 0 good, -1 partly
    sources: np.ndarray  # N indices into the bank images


def _to_uint8(inputs: np.ndarray, pre: Preprocess) -> list[np.ndarray]:
    """Model inputs (Nx3xHxW, normalized) back to HxWx3 uint8 images at input size."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(pre.std, np.float32).reshape(1, 1, 1, 3)
    x = (inputs.transpose(0, 2, 3, 1) * std + mean) * 255.0
    return list(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def paint_bank(bank_inputs: np.ndarray, pre: Preprocess, embed: EmbedFn, batch: int, seed: int) -> PaintedBank:
    """One validation-mix synthetic defect on each of FIT_IMAGES seeded bank images, embedded."""
    rng = np.random.default_rng(seed + 4099)
    # At most half the bank: the other half is what the painted patches are matched against.
    sources = np.sort(rng.permutation(len(bank_inputs))[:min(FIT_IMAGES, len(bank_inputs) // 2)])
    images = _to_uint8(bank_inputs[sources], pre)
    painted, masks = zip(*(validation_defect(im, rng, donors=images) for im in images))
    maps = embed_all(embed, normalize(list(painted), pre), batch, "painted bank images (reduction fit)")
    grid = maps.shape[2:]
    labels = np.concatenate([patch_labels(m, grid).reshape(-1) for m in masks])
    return PaintedBank(maps, labels, sources)


def _residuals(rows: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each row minus its nearest reference row."""
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    out = np.empty_like(rows)
    for i in range(0, len(rows), _CHUNK):
        p = rows[i:i + _CHUNK]
        out[i:i + _CHUNK] = p - ref[np.argmin(ref_sq[None, :] - 2.0 * p @ ref.T, axis=1)]
    return out


@dataclass(frozen=True)
class ResidualMoments:
    """Second moments (C x C) of defect and good patches' residuals to their nearest good patch."""

    defect: np.ndarray
    good: np.ndarray
    mean: np.ndarray  # of the good bank patches (the reduction's centre)
    n_defect_rows: int


def residual_moments(bank_maps: np.ndarray, painted: PaintedBank, seed: int) -> ResidualMoments:
    """The painted patches' and their own images' good patches' residuals, against a coreset of the
    other bank images' patches (fitted once; every dim and ridge reuses them)."""
    rng = np.random.default_rng(seed + 7919)
    others = np.setdiff1d(np.arange(len(bank_maps)), painted.sources)
    if not len(others) or not len(painted.sources):
        raise KenpinError(f"reduction.discriminant needs at least 2 bank images (it has {len(bank_maps)}); "
                          f"use PCA (discriminant: false)")
    rows = flatten_patches(bank_maps[others])
    pool = rows[np.sort(rng.choice(len(rows), min(POOL_ROWS, len(rows)), replace=False))]
    ref = pool[greedy_coreset(pool, min(REF_ROWS, len(pool)), 128, seed)]
    bad = flatten_patches(painted.maps)[painted.labels == 1]
    good = flatten_patches(bank_maps[painted.sources])
    good = good[rng.choice(len(good), min(GOOD_ROWS, len(good)), replace=False)]
    r_bad, r_good = (_residuals(x, ref).astype(np.float64) for x in (bad, good))
    return ResidualMoments(r_bad.T @ r_bad / max(len(r_bad), 1), r_good.T @ r_good / len(r_good),
                           pool.mean(axis=0), len(r_bad))


def fit_discriminant(moments: ResidualMoments, dim: int, ridge: float) -> Reduction:
    """The span of the ``dim`` directions with the most defect residual energy per unit of good residual energy."""
    c = moments.good.shape[0]
    check_dim(dim, c, c)
    if moments.n_defect_rows < dim:
        raise KenpinError(f"reduction.dim = {dim}: the synthetic defects cover only {moments.n_defect_rows} "
                          f"patches; use a smaller dim or PCA")
    s_good = moments.good
    values, vectors = scipy.linalg.eigh(moments.defect, s_good + ridge * np.trace(s_good) / c * np.eye(c))
    order = np.argsort(values)[::-1][:dim]
    # Their span, with orthonormal rows: distances inside it stay Euclidean, as the full embedding's
    # are (the eigenvectors' own scaling whitens by the good residuals' noise and stretches the 1x1
    # convolution's weights past what int8 keeps: the tiny line's bundle failed its parity gate).
    comps = np.linalg.qr(vectors[:, order])[0].T
    comps *= np.where(comps[np.arange(dim), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed sign
    kept = float(values[order].sum() / max(values.sum(), 1e-12))
    return Reduction(moments.mean.astype(np.float32), comps.astype(np.float32), np.ones(dim, np.float32), kept)
