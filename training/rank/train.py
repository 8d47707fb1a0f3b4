"""``kenpin train-ranker``: train a RankNet scorer and add it, int8 with its parity gate, to a bundle.

The quality gate trains on degraded ``DATA/train/good`` images and sets its floors on a held-out
part of them; the grade trains on an operator file (image,rating or better,worse).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.bundle import Bundle, load_bundle
from device.errors import KenpinError
from device.ranker_input import RankerInput
from export.ranker import add_to_bundle, export_onnx, ort_scores, parity_entry, quantize_ranker
from training.fit import read_good_split, synthetic_defects
from training.rank.flips import anomaly_z
from training.rank.floors import Judged, floor_entry
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
from training.recipe import Recipe, recipe_from_dict

log = logging.getLogger(__name__)


@dataclass
class GoodSplit:
    """The gate's train/good images, split around the anomaly bundle's own hold-out."""

    train: list[np.ndarray]  # the gate trains on these (from the anomaly model's bank images)
    unseen: list[np.ndarray]  # held out by the anomaly model too: its verdicts on them are honest
    extra: list[np.ndarray]  # more held-out bank images, where the floors want more clean frames


def good_split(data: Path, spec: QualitySpec, anomaly: Recipe, seed: int) -> GoodSplit:
    """The gate holds out the images the anomaly model held out (they set its threshold; the bank never
    saw them), topped up from the bank images to ``holdout_fraction``, and trains on a seeded pick of the rest."""
    split = read_good_split(data, anomaly.train_images, anomaly.calibration.holdout_fraction, anomaly.seed)
    if len(split.bank) + len(split.holdout) < 10:
        raise KenpinError(f"{data / 'train' / 'good'}: {len(split.bank) + len(split.holdout)} images; the quality "
                          "gate needs at least 10 good images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.bank))
    wanted = round(spec.holdout_fraction * (len(split.bank) + len(split.holdout)))
    n_extra = min(max(0, wanted - len(split.holdout)), len(split.bank) // 2)
    rest = order[n_extra:]
    if spec.images:  # the pick's share that is not held out
        rest = rest[: max(1, round(spec.images * (1 - spec.holdout_fraction)))]
    return GoodSplit([split.bank[i] for i in np.sort(rest)], split.holdout, [split.bank[i] for i in order[:n_extra]])


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
            bundle: Path, role: str, entry_fn: Callable[[np.ndarray], dict[str, Any]],
            extra: dict[str, Path] | None = None) -> dict[str, Any]:
    """ONNX, int8 with the parity gate, the role's manifest entry (from int8 scores on ``check``), into the
    bundle; ``extra`` files (written by ``entry_fn`` at the latest) go with it."""
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
        return add_to_bundle(bundle, role, fp32, int8, entry, extra)


def _plain(d: Any) -> Any:
    """Tuples to lists, all the way down, so the recipe reads back from the manifest's JSON as written."""
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    return [_plain(v) for v in d] if isinstance(d, (list, tuple)) else d


def train_quality(data: Path, bundle: Path, recipe: RankerRecipe) -> dict[str, Any]:
    """Train the capture-quality gate on degraded ``data/train/good`` and add it to ``bundle``."""
    b = load_bundle(bundle)  # fail before minutes of training, not after
    spec = recipe.quality
    split = good_split(data, spec, bundle_recipe(b), recipe.seed)
    pool = build_quality_pool(split.train, spec.input, spec.kinds, spec.levels_per_kind, spec.uint8_share, recipe.seed)
    hold_imgs = split.unseen + split.extra
    hold = build_quality_pool(hold_imgs, spec.input, spec.kinds, spec.levels_per_kind, spec.uint8_share, recipe.seed + 1)
    judged = judged_pools(b, split.unseen, spec, recipe.seed)
    log.info("training the quality ranker on %d inputs from %d images (%d held out, %d of them judged for verdict "
             "flips with %d synthetic defects)", len(pool.inputs), len(split.train), len(hold_imgs),
             len(split.unseen), len(split.unseen))
    cols = spec.columns()
    column = {k: c for c, (_, kinds) in enumerate(cols) for k in kinds}
    families = [[pool.kinds.index(k) for k in kinds] for _, kinds in cols]
    trained = train_ranknet(pool.inputs, quality_pairs(pool, spec.cross_share, families), spec.input, spec.train,
                            "quality ranknet", outputs=len(cols))
    calib = pool.inputs[np.random.default_rng(recipe.seed).permutation(len(pool.inputs))[: recipe.export.quant_images]]
    fp32_val = _pair_accuracy(hold, score_pool(trained.model, hold.inputs), column)

    with tempfile.TemporaryDirectory() as tmp:
        frames = Path(tmp) / "flips.npz"

        def entry(int8_scores: np.ndarray) -> dict[str, Any]:
            n = len(hold.inputs)
            flips = Judged(judged, int8_scores[n:], judged.group >= len(split.unseen))
            save_judged(frames, flips)
            return {**floor_entry(hold, int8_scores[:n], spec, flips),
                    "validation": {"held_out_images": len(hold_imgs),
                                   "pairwise_accuracy_int8": _pair_accuracy(hold, int8_scores[:n], column),
                                   "pairwise_accuracy_fp32": fp32_val}}

        check = np.concatenate([hold.inputs, judged.inputs.astype(hold.inputs.dtype)])
        return _export(trained, spec.input, recipe, calib, check, bundle, "quality", entry,
                       {"calibration_frames": frames})


def save_judged(path: Path, j: Judged) -> None:
    """The verdict-flip calibration frames, kept in the bundle (``rankers.quality.calibration_frames``) so that
    the floors and guard can be audited, or recalibrated for another target, without judging again."""
    p = j.pool
    np.savez_compressed(path, z=p.z.astype(np.float32), group=p.group, kind=p.kind, level=p.level, defect=j.defect,
                        scores=j.scores.astype(np.float32), kinds=np.array(p.kinds))


def bundle_recipe(b: Bundle) -> Recipe:
    """The anomaly recipe a bundle was trained with (its hold-out is the gate's)."""
    if "recipe" not in b.manifest:
        raise KenpinError(f"{b.root}: the manifest has no recipe, so its held-out images are unknown; "
                          "retrain it with kenpin train")
    return recipe_from_dict(b.manifest["recipe"], f"{b.root}: manifest recipe")


def judged_pools(b: Bundle, unseen: list[np.ndarray], spec: QualitySpec, seed: int) -> QualityPool:
    """The anomaly model's held-out good images and one synthetic defect painted on each, clean and
    degraded at training strengths, each version judged by the bundle's int8 anomaly model (groups of
    the defects follow the good ones)."""
    from device.runtime import Inspector

    z = anomaly_z(Inspector(b, "int8", 2))
    defects = synthetic_defects(unseen, 1, seed)
    return build_quality_pool(unseen + defects, spec.input, spec.kinds, spec.levels_per_kind, spec.uint8_share,
                              seed + 2, judge=z)


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
