"""Validation of metric learning: what every ``val_every`` steps is judged on, and how.

Held-out good images against synthetic defects painted on them (the mix ``kenpin train`` and
``kenpin tune`` validate on) and, with ``metric.val_real_fraction``, a held-out share of the line's
own defects from ``train/<defect>/``; scored exactly as the station scores (coreset bank,
nearest-neighbour distance, the recipe's image score). Never ``test/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from device.scoring import ImageScorer, NearestNeighbourScorer
from training.area_defects import validation_defect
from training.coreset import greedy_coreset
from training.fit import fit_fusion, fit_texture, flatten_patches, image_scores
from training.metric.batches import normalize
from training.metric.losses import collapse_stats
from training.metric.model import TrainedEmbedder
from training.metric.pair_sampling import LabeledDefect
from training.recipe import Recipe

VAL_FUSION_IMAGES = 16  # training images (outside the validation bank) that standardize a fused score


@dataclass
class ValSet:
    """Validation inputs: a bank from training images, held-out good, synthetic defects on them, and
    other training images that standardize the texture-fused score (``scoring.texture``)."""

    bank: np.ndarray
    good: np.ndarray
    defects: np.ndarray
    fusion: np.ndarray
    real: np.ndarray  # held-out real defects (``split_real``); may be empty


def split_real(found: list[LabeledDefect], fraction: float, seed: int) -> tuple[list[LabeledDefect], list[LabeledDefect]]:
    """(trained on, validated on): a seeded ``fraction`` of each defect type's images (rounded down,
    never all of a type) held out of training to validate on."""
    if fraction <= 0:
        return list(found), []  # in the order found: a run without a hold-out trains as it always has
    trained, held = [], []
    rng = np.random.default_rng(seed + 7919)
    for kind in sorted({d.defect for d in found}):
        mine = [d for d in found if d.defect == kind]
        order = rng.permutation(len(mine))
        n_held = min(int(len(mine) * fraction), len(mine) - 1)
        held += [mine[i] for i in np.sort(order[:n_held])]
        trained += [mine[i] for i in np.sort(order[n_held:])]
    return trained, held


def make_valset(train: list[np.ndarray], holdout: list[np.ndarray], recipe: Recipe,
                real: list[np.ndarray] | None = None) -> ValSet:
    """Fixed for the whole run (own seed), so every validation compares like with like.

    The defects are the mix ``kenpin train`` and ``kenpin tune`` validate on (``validation_defect``:
    local and area-wide, half each), so training is selected on what the frozen recipe was;
    ``real``: held-out real defects at input size.
    """
    m, pre = recipe.metric, recipe.preprocess
    rng = np.random.default_rng(recipe.seed + 104729)
    order = rng.permutation(len(train))
    bank = [train[i] for i in np.sort(order[: m.val_bank_images])]
    # Training images outside the validation bank: their patches are not in it, like held-out ones.
    fusion = [train[i] for i in np.sort(order[m.val_bank_images:][:VAL_FUSION_IMAGES])] or bank[:VAL_FUSION_IMAGES]
    good = [holdout[i] for i in np.sort(rng.permutation(len(holdout))[: m.val_images])]
    defects = [validation_defect(im, rng, donors=train)[0] for im in good]
    real_x = normalize(real, pre) if real else np.zeros((0, 3, pre.height, pre.width), np.float32)
    return ValSet(*(normalize(x, pre) for x in (bank, good, defects, fusion)), real_x)


@torch.no_grad()
def embed_batches(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    out = [model(torch.from_numpy(x[i:i + batch]).to(device)).float().cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)


def validate(model: TrainedEmbedder, val: ValSet, recipe: Recipe, device: torch.device) -> dict[str, float]:
    """Synthetic-defect AUROC with the recipe's own image score, and the spread of good embeddings."""
    model.eval()
    spec, batch = recipe.metric, recipe.batch_size
    bank_maps = embed_batches(model, val.bank, device, batch)
    patches = flatten_patches(bank_maps)
    scorer = ImageScorer(NearestNeighbourScorer(patches[greedy_coreset(patches, spec.val_coreset, 128, recipe.seed)]))
    if recipe.scoring.texture:
        texture = fit_texture(bank_maps)
        fusion = fit_fusion(scorer.patch, texture, embed_batches(model, val.fusion, device, batch))
        scorer = ImageScorer(scorer.patch, texture, fusion)
    good = image_scores(scorer, embed_batches(model, val.good, device, batch))
    synthetic = _auroc(good, image_scores(scorer, embed_batches(model, val.defects, device, batch)))
    real = _auroc(good, image_scores(scorer, embed_batches(model, val.real, device, batch))) if len(val.real) else None
    spread = collapse_stats(torch.from_numpy(patches))
    return {"val_auroc": synthetic if real is None else (synthetic + real) / 2, "val_synthetic_auroc": synthetic,
            "val_real_auroc": real, "val_mean_distance": spread.mean_distance,
            "val_effective_rank": spread.effective_rank, "val_variance": spread.variance,
            "collapsed": spread.looks_collapsed()}


def _auroc(good: np.ndarray, bad: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad]))
