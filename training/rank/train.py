"""``kenpin train-ranker``: train a RankNet scorer and add it, int8 with its parity gate, to a bundle.

The quality gate trains on degraded ``DATA/train/good`` images and sets its floors on a held-out
part of them; the grade trains on an operator file (image,rating or better,worse).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.bundle import load_bundle
from device.errors import KenpinError
from device.images import list_images
from device.ranker_input import RankerInput
from export.ranker import add_to_bundle, export_onnx, ort_scores, parity_entry, quantize_ranker
from training.dataset import read_many
from training.fit import split_holdout
from training.rank.floors import floor_entry
from training.rank.metrics import ranking_metrics
from training.rank.optimize import TrainResult, score_pool, train_ranknet
from training.rank.pairs import (
    QualityPool,
    build_quality_pool,
    judged_inputs,
    judgement_pairs,
    quality_pairs,
    read_judgements,
)
from training.rank.recipe import QualitySpec, RankerRecipe

log = logging.getLogger(__name__)


def good_split(data: Path, spec: QualitySpec, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The gate's train/good images: (trained on, held out to set the floors and validate), seeded."""
    paths = list_images(data / "train" / "good")
    if len(paths) < 10:
        raise KenpinError(f"{data / 'train' / 'good'}: {len(paths)} images; the quality gate needs at least 10 good images")
    rng = np.random.default_rng(seed)
    if spec.images:
        paths = sorted(rng.choice(paths, size=min(spec.images, len(paths)), replace=False).tolist())
    train_i, hold_i = split_holdout(len(paths), spec.holdout_fraction, seed)
    images, kept = read_many(paths, "reading train/good")
    pos = {p: i for i, p in enumerate(kept)}
    pick = lambda idx: [images[pos[paths[i]]] for i in idx if paths[i] in pos]  # noqa: E731
    return pick(train_i), pick(hold_i)


def _pair_accuracy(pool: QualityPool, scores: np.ndarray, column: dict[str, int]) -> dict[str, float]:
    """Per kind: share of (clean, degraded) pairs of one image its family's column orders right."""
    out = {}
    for k, name in enumerate(pool.kinds):
        c = column[name]
        clean = {int(g): scores[r, c] for r, g in enumerate(pool.group) if pool.kind[r] < 0}
        rows = np.flatnonzero(pool.kind == k)
        out[name] = float(np.mean([clean[int(pool.group[r])] > scores[r, c] for r in rows]))
    return out


def _export(trained: TrainResult, inp: RankerInput, recipe: RankerRecipe, calib: np.ndarray, check: np.ndarray,
            bundle: Path, role: str, entry_fn: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """ONNX, int8 with the parity gate, the role's manifest entry (from int8 scores on ``check``), into the bundle."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        export_onnx(trained.model, inp, fp32)
        # the fp32 leading convolutions are the crop branch's; a crop-less input has none to keep
        ex = recipe.export if inp.crops else replace(recipe.export, fp32_leading_convs=0)
        ops = ("Gemm", "MatMul") if inp.source == "embedding" else ("Conv",)
        int8, best, tried = quantize_ranker(fp32, work, calib, check, ex, ops)
        entry = {"input": inp.to_dict(), "input_shape": inp.shape, **entry_fn(ort_scores(int8, check)),
                 "parity": parity_entry(best, tried, recipe.export),
                 "training": {"steps": trained.history[-1]["step"] if trained.history else 0,
                              "final_loss": trained.history[-1]["loss"] if trained.history else None,
                              "seconds": round(trained.seconds, 1), "device": trained.device},
                 "recipe": _plain(asdict(recipe))}
        return add_to_bundle(bundle, role, fp32, int8, entry)


def _plain(d: Any) -> Any:
    """Tuples to lists, all the way down, so the recipe reads back from the manifest's JSON as written."""
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    return [_plain(v) for v in d] if isinstance(d, (list, tuple)) else d


def train_quality(data: Path, bundle: Path, recipe: RankerRecipe) -> dict[str, Any]:
    """Train the capture-quality gate on degraded ``data/train/good`` and add it to ``bundle``."""
    load_bundle(bundle)  # fail before minutes of training, not after
    spec = recipe.quality
    train_imgs, hold_imgs = good_split(data, spec, recipe.seed)
    pool = build_quality_pool(train_imgs, spec.input, spec.kinds, spec.levels_per_kind, spec.uint8_share, recipe.seed)
    hold = build_quality_pool(hold_imgs, spec.input, spec.kinds, spec.levels_per_kind, spec.uint8_share, recipe.seed + 1)
    log.info("training the quality ranker on %d inputs from %d images (%d held out)", len(pool.inputs),
             len(train_imgs), len(hold_imgs))
    cols = spec.columns()
    column = {k: c for c, (_, kinds) in enumerate(cols) for k in kinds}
    families = [[pool.kinds.index(k) for k in kinds] for _, kinds in cols]
    trained = train_ranknet(pool.inputs, quality_pairs(pool, spec.cross_share, families), spec.input, spec.train,
                            "quality ranknet", outputs=len(cols))
    calib = pool.inputs[np.random.default_rng(recipe.seed).permutation(len(pool.inputs))[: recipe.export.quant_images]]
    fp32_val = _pair_accuracy(hold, score_pool(trained.model, hold.inputs), column)

    def entry(int8_scores: np.ndarray) -> dict[str, Any]:
        return {**floor_entry(hold, int8_scores, spec),
                "validation": {"held_out_images": len(hold_imgs),
                               "pairwise_accuracy_int8": _pair_accuracy(hold, int8_scores, column),
                               "pairwise_accuracy_fp32": fp32_val}}

    return _export(trained, spec.input, recipe, calib, hold.inputs, bundle, "quality", entry)


def train_grade(ratings: Path, bundle: Path, recipe: RankerRecipe) -> dict[str, Any]:
    """Train the grade ranker on an operator file and add it to ``bundle``."""
    load_bundle(bundle)
    judged = read_judgements(ratings)
    spec = recipe.grade
    prepare = spec.input
    if spec.input.source != "frame":  # the grade reads the bundle's own int8 anomaly model
        from device.runtime import Inspector

        insp = Inspector(load_bundle(bundle), "int8", 2)
        if spec.input.source == "anomaly":
            prepare = lambda rgb: spec.input.from_map(insp.anomaly_map(rgb))  # noqa: E731
        else:
            prepare = lambda rgb: spec.input.from_embedding(*insp.patch_view(rgb))  # noqa: E731
    inputs = judged_inputs(judged.images, prepare, spec.input)
    log.info("training the grade ranker on %d judgements of %d images", len(judged.pairs), len(judged.images))
    trained = train_ranknet(inputs, judgement_pairs(judged.pairs, 4), spec.input, spec.train, "grade ranknet")
    plain = inputs[::4]  # unflipped rows: the images as the station sees them
    calib = inputs[np.random.default_rng(recipe.seed).permutation(len(inputs))[: recipe.export.quant_images]]

    def entry(int8_scores: np.ndarray) -> dict[str, Any]:
        grades = int8_scores[:, 0]
        fit = ranking_metrics(grades, np.asarray(judged.ratings)) if judged.ratings else None
        return {"reference_scores": sorted(float(s) for s in grades),
                "training_data": {"file": str(ratings), "n_images": len(judged.images), "n_pairs": len(judged.pairs),
                                  "fit_on_training_images_int8": fit}}

    return _export(trained, spec.input, recipe, calib, plain, bundle, "grade", entry)
