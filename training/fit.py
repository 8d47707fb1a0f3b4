"""Fitting the anomaly model: reference bank from good patches, threshold from held-out good.

Every step takes an ``embed`` function (Nx3xHxW float32 → NxCxhxw), so the same code builds the
fp32 model from the PyTorch checkpoint and the int8 model from its quantized ONNX graph.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from device.errors import KenpinError
from device.scoring import (HEAT_FLOOR_QUANTILE, BankSearch, Fusion, ImageScorer, NearestNeighbourScorer, Normalization,
                            TextureModel, image_score, patches_from_map, search_parts, texture_descriptor)
from training.area_defects import validation_defect
from device.calibrate import calibrate
from training.dataset import read_many, scan_mvtec
from training.metric.pair_sampling import NuisanceSpec, nuisance

EmbedFn = Callable[[np.ndarray], np.ndarray]
# (bank rows, texture model or None) → the bank's search (NearestNeighbourScorer's contract; a
# search graph may also compute the texture distance, device.scoring.search_parts)
SearchFactory = Callable[[np.ndarray, TextureModel | None], BankSearch]


def torch_embed_fn(model: torch.nn.Module) -> EmbedFn:
    """The PyTorch model as an embed function (inference mode, no autograd)."""

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return embed


def embed_all(embed: EmbedFn, inputs: np.ndarray, batch: int, desc: str) -> np.ndarray:
    """Embed Nx3xHxW inputs in batches, with a progress bar."""
    out = [embed(inputs[i : i + batch]) for i in tqdm(range(0, len(inputs), batch), desc=desc, unit="batch")]
    return np.concatenate(out, axis=0)


def flatten_patches(maps: np.ndarray) -> np.ndarray:
    """NxCxhxw → (N*h*w)xC, in the order :func:`patches_from_map` uses per image."""
    n, c = maps.shape[:2]
    return np.ascontiguousarray(maps.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c), dtype=np.float32)


def image_scores(scorer: NearestNeighbourScorer | ImageScorer, maps: np.ndarray) -> np.ndarray:
    """Image score of each feature map, exactly as the station computes it."""
    scorer = scorer if isinstance(scorer, ImageScorer) else ImageScorer(scorer)
    return np.array([scorer.score(patches_from_map(m))[0] for m in maps], dtype=np.float64)


def fit_texture(bank_maps: np.ndarray) -> TextureModel:
    """Texture statistics of the bank images: their mean and a Ledoit-Wolf shrunk precision matrix."""
    from sklearn.covariance import LedoitWolf

    desc = np.stack([texture_descriptor(patches_from_map(m)) for m in bank_maps])
    lw = LedoitWolf().fit(desc)
    return TextureModel(lw.location_.astype(np.float64), lw.precision_.astype(np.float64))


def fit_fusion(patch: BankSearch, texture: TextureModel, holdout_maps: np.ndarray) -> Fusion:
    """Standardization of the patch and texture scores, from held-out good images."""
    scored = (search_parts(patch, texture, p) for p in map(patches_from_map, holdout_maps))
    parts = np.array([(image_score(d), tex) for d, tex in scored], dtype=np.float64)
    sd = np.maximum(parts.std(axis=0), 1e-9)
    return Fusion(float(parts[:, 0].mean()), float(sd[0]), float(parts[:, 1].mean()), float(sd[1]))


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (bank, held-out) of ``n`` good images; at least one image on each side."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = min(max(1, round(n * fraction)), n - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


@dataclass
class GoodSplit:
    """train/good as read once: images for the bank (and for metric learning) and the hold-out
    that sets the threshold and validates, which no training step ever sees."""

    bank: list[np.ndarray]
    holdout: list[np.ndarray]
    n_skipped: int


def few_shot_pick(n: int, train_images: int, seed: int) -> np.ndarray:
    """Indices of the ``train_images`` good images a few-shot recipe trains on (of ``n`` readable)."""
    return np.sort(np.random.default_rng(seed + 1).permutation(n)[:train_images])


def read_good_split(data_dir: Path, train_images: int, holdout_fraction: float, seed: int) -> GoodSplit:
    """Read ``data_dir/train/good`` (a seeded pick of ``train_images`` of them when > 0) and split it."""
    ds = scan_mvtec(data_dir)
    images, kept = read_many(ds.train_good, desc="reading train/good")
    if train_images:
        if train_images > len(images):
            raise KenpinError(f"train_images = {train_images}: {data_dir / 'train' / 'good'} has only {len(images)} readable images")
        images = [images[i] for i in few_shot_pick(len(images), train_images, seed)]
    if len(images) < 4:
        raise KenpinError(f"{data_dir / 'train' / 'good'}: {len(images)} readable image(s); need at least 4 good images")
    bank_idx, hold_idx = split_holdout(len(images), holdout_fraction, seed)
    return GoodSplit([images[i] for i in bank_idx], [images[i] for i in hold_idx], len(ds.train_good) - len(kept))


def augment_views(images: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """Each image followed by its extra views (``bank.augment``): flips, or all eight dihedral views."""
    if mode == "none":
        return list(images)
    ops = [lambda x: x, lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: x[::-1, ::-1]]
    if mode == "dihedral":
        ops += [lambda x, f=f: np.swapaxes(f(x), 0, 1) for f in list(ops)]
    return [np.ascontiguousarray(op(im)) for im in images for op in ops]


def nuisance_views(images: list[np.ndarray], n: int, spec: NuisanceSpec, seed: int) -> list[np.ndarray]:
    """Each image followed by ``n`` copies under a fresh draw of the line's nuisance (``bank.nuisance_views``)."""
    rng = np.random.default_rng(seed + 7907)
    return [v for im in images for v in [im, *(nuisance(im, rng, spec) for _ in range(n))]]


def synthetic_defects(images: list[np.ndarray], per_image: int, seed: int) -> list[np.ndarray]:
    """Held-out good images with painted defects, local and area-wide (``validation_defect``):
    validation negatives that never touch test/."""
    rng = np.random.default_rng(seed + 7919)
    return [validation_defect(im, rng)[0] for im in images for _ in range(per_image)]


@dataclass
class FittedVariant:
    """One precision's fitted state and what its calibration measured."""

    bank: np.ndarray
    normalization: Normalization
    holdout_scores: np.ndarray
    synthetic_scores: np.ndarray
    texture: TextureModel | None = None
    fusion: Fusion | None = None
    heat_floor: float | None = None  # HEAT_FLOOR_QUANTILE of held-out good patch distances

    @property
    def holdout_false_reject_rate(self) -> float:
        return float(np.mean(self.holdout_scores > self.normalization.threshold))

    @property
    def synthetic_auroc(self) -> float:
        y = np.r_[np.zeros(len(self.holdout_scores)), np.ones(len(self.synthetic_scores))]
        return float(roc_auc_score(y, np.r_[self.holdout_scores, self.synthetic_scores]))

    @property
    def synthetic_escape_rate(self) -> float:
        return float(np.mean(self.synthetic_scores <= self.normalization.threshold))

    def normalized(self) -> np.ndarray:
        """Normalized scores of held-out good then synthetic-defect images (for parity)."""
        return np.asarray(self.normalization(np.r_[self.holdout_scores, self.synthetic_scores]))


def fit_variant(
    embed: EmbedFn,
    bank_maps: np.ndarray,
    coreset: np.ndarray,
    holdout: np.ndarray,
    synthetic: np.ndarray,
    target_frr: float,
    batch: int,
    texture: bool = False,
    search: SearchFactory | None = None,
) -> FittedVariant:
    """Bank = the coreset patches of ``bank_maps``; threshold from the held-out good inputs.

    With ``texture``, the texture model is fitted on all bank images and the fusion on the
    held-out good ones, which then also set the threshold on the fused score. ``search``: makes
    the bank's search (default the fp32 GEMM), so calibration scores as the station will.
    """
    hold_maps = embed_all(embed, holdout, batch, "held-out good")
    syn_maps = embed_all(embed, synthetic, batch, "synthetic defects")
    return fit_maps(bank_maps, coreset, hold_maps, syn_maps, target_frr, texture, search)


def fit_maps(bank_maps: np.ndarray, coreset: np.ndarray, hold_maps: np.ndarray, syn_maps: np.ndarray,
             target_frr: float, texture: bool = False, search: SearchFactory | None = None) -> FittedVariant:
    """:func:`fit_variant` on feature maps already computed (one embedding pass, many fits)."""
    bank = flatten_patches(bank_maps)[coreset]
    tex = fit_texture(bank_maps) if texture else None
    patch = NearestNeighbourScorer(bank) if search is None else search(bank, tex)
    fus = None if tex is None else fit_fusion(patch, tex, hold_maps)
    scorer = ImageScorer(patch, tex, fus)
    # One search per held-out image gives both its score and its patches' distances.
    hold_parts = [scorer.score(patches_from_map(m)) for m in hold_maps]
    hold = np.array([raw for raw, _ in hold_parts], dtype=np.float64)
    # Heat maps start where held-out good patches stay under (HEAT_FLOOR_QUANTILE of their distances).
    floor = float(np.quantile(np.concatenate([d for _, d in hold_parts]), HEAT_FLOOR_QUANTILE))
    syn = image_scores(scorer, syn_maps)
    return FittedVariant(bank, calibrate(hold, target_frr), hold, syn, tex, fus, floor)
