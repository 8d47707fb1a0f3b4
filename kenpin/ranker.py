"""The RankNet jobs: ``kenpin train-ranker`` (quality gate or grade into a bundle) and ``kenpin eval-ranker``.

    kenpin train-ranker --data DIR --bundle B                        # quality gate from DIR/train/good
    kenpin train-ranker --bundle B --role grade --ratings FILE.csv   # grade from operator judgements
    kenpin eval-ranker  --bundle B --data DIR --json Q.json --report R   # held-out degradations on test/good
    kenpin eval-ranker  --bundle B --role grade --ratings HELDOUT.csv    # Kendall τ, NDCG@10
    kenpin mask-ratings --data DIR --out RATINGS                     # severity by mask area, two halves
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.bundle import load_bundle
from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.quality import Grader, QualityGate
from device.ranker_input import RankerInput
from export.ranker import RankerExportSpec, add_to_bundle, export_onnx, ort_scores, parity_entry, quantize_ranker
from training.dataset import mask_for, read_many
from training.degrade import FAMILIES, KINDS, TRAIN_GRID
from training.fit import split_holdout
from training.rank_eval import degradation_table, plot_strength, ranking_metrics
from training.rank_pairs import (
    QualityPool,
    build_quality_pool,
    judged_inputs,
    judgement_pairs,
    quality_pairs,
    read_judgements,
)
from training.ranknet import TrainResult, TrainSpec, score_pool, train_ranknet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualitySpec:
    """The capture-quality gate: what it trains on and how its floor is set."""

    input: RankerInput = field(default_factory=RankerInput)  # whole-frame stats off: see recipe_ranker.yaml
    images: int = 300  # train/good images used (a seeded pick; 0 = all)
    holdout_fraction: float = 0.2  # of those, kept out of training to set the floor
    kinds: tuple[str, ...] = KINDS
    # family → kinds: one score column (and one floor) per family that has a kind in ``kinds``
    families: dict[str, Any] = field(default_factory=lambda: dict(FAMILIES))
    levels_per_kind: int = 2
    uint8_share: float = 0.5
    cross_share: float = 0.25
    target_false_retake_rate: float = 0.02
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=3000))

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise KenpinError(f"quality.kinds: {sorted(unknown)} unknown; use some of {list(KINDS)}")
        self._check_families()
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise KenpinError(f"quality.holdout_fraction = {self.holdout_fraction}: use 0.05–0.5")
        if not 0 < self.target_false_retake_rate < 0.5:
            raise KenpinError(f"quality.target_false_retake_rate = {self.target_false_retake_rate}: use (0, 0.5)")
        for key in ("uint8_share", "cross_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise KenpinError(f"quality.{key} = {getattr(self, key)}: use 0–1")
        if self.levels_per_kind < 1 or self.images < 0 or 0 < self.images < 10:
            raise KenpinError("quality.levels_per_kind must be ≥ 1 and quality.images 0 (all) or ≥ 10")


    def _check_families(self) -> None:
        seen: dict[str, str] = {}
        for name, kinds in self.families.items():
            if not isinstance(kinds, (list, tuple)) or not kinds:
                raise KenpinError(f"quality.families.{name} = {kinds!r}: expected a list of kinds")
            for k in kinds:
                if k not in KINDS:
                    raise KenpinError(f"quality.families.{name}: kind {k!r} unknown; use some of {list(KINDS)}")
                if k in seen:
                    raise KenpinError(f"quality.families: kind {k!r} is in both {seen[k]!r} and {name!r}; put it in one")
                seen[k] = name
        object.__setattr__(self, "families", {n: tuple(k) for n, k in self.families.items()})  # YAML lists → tuples
        orphans = [k for k in self.kinds if k not in seen]
        if orphans:
            raise KenpinError(f"quality.kinds: {orphans} belong to no family; add them to one under quality.families")

    def columns(self) -> list[tuple[str, tuple[str, ...]]]:
        """The model's output columns: (family, its trained kinds), for families with a trained kind."""
        out = [(name, tuple(k for k in kinds if k in self.kinds)) for name, kinds in self.families.items()]
        return [(name, kinds) for name, kinds in out if kinds]


@dataclass(frozen=True)
class GradeSpec:
    """The grade ranker learnt from an operator file."""

    input: RankerInput = field(default_factory=lambda: RankerInput(32, 0, "embedding"))  # see the recipe
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=600, batch_pairs=64, weight_decay=0.01, width=16))


@dataclass(frozen=True)
class RankerRecipe:
    """``configs/recipe_ranker.yaml``, validated once."""

    quality: QualitySpec = field(default_factory=QualitySpec)
    grade: GradeSpec = field(default_factory=GradeSpec)
    export: RankerExportSpec = field(default_factory=RankerExportSpec)
    seed: int = 0


def load_ranker_recipe(path: str | Path | None) -> RankerRecipe:
    """Read a ranker recipe YAML (None → defaults); unknown keys and wrong types name the key."""
    from training.recipe import load_yaml_dataclass

    return load_yaml_dataclass(RankerRecipe, path)


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


def family_floors(clean: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of held-out clean scores (N x F): floors and clean spreads.

    The families' false retakes add up, so each family gets the same share q of the target, the
    largest whose union stays at the target on these frames. A held-out set of a few dozen
    frames says little about a 1-in-200 tail, so no floor is set above the normal estimate of
    that quantile either (mean − z·sd at target / F): with few frames the estimate is the safer one.
    """
    from scipy.stats import norm

    n, f = clean.shape
    scale = clean.std(0)
    scale[~(scale > 0)] = 1.0
    best = clean.min(0)  # no held-out clean frame retaken
    for q in np.linspace(target / f, target, 40):
        floors = np.quantile(clean, q, axis=0, method="lower")
        if np.mean((clean < floors).any(1)) <= target:
            best = floors
    normal = clean.mean(0) + norm.ppf(target / f) * scale
    return np.minimum(best, normal), scale


def _floor_entry(pool: QualityPool, scores: np.ndarray, spec: QualitySpec) -> dict[str, Any]:
    """Floors from held-out clean frames at the target false-retake rate; what the gate catches per kind."""
    floors, scale = family_floors(scores[pool.kind < 0], spec.target_false_retake_rate)
    quality = ((scores - floors) / scale).min(1)  # the gate's quality: weakest family's margin
    clean = quality[pool.kind < 0]
    caught = {}
    for k, name in enumerate(pool.kinds):
        strong = (pool.kind == k) & (pool.level * 2 > len(TRAIN_GRID[name]))
        caught[name] = float(np.mean(quality[strong] < 0)) if strong.any() else None
    families = [{"name": n, "kinds": list(kinds), "floor": float(f), "scale": float(sd)}
                for (n, kinds), f, sd in zip(spec.columns(), floors, scale)]
    return {"floor": 0.0, "families": families, "calibration": {
        "method": "per family: a quantile of held-out clean train/good frames' int8 scores, the same for every "
                  "family, the largest whose union of false retakes stays at the target, and at most the normal "
                  "estimate mean − z·sd of target / families; quality = the weakest family's "
                  "(score − floor) / clean spread, retaken below 0",
        "target_false_retake_rate": spec.target_false_retake_rate, "n_images": int(len(clean)),
        "holdout_false_retake_rate": float(np.mean(clean < 0)),
        "retake_rate_upper_half_strengths": caught}}


def _export(trained: TrainResult, inp: RankerInput, recipe: RankerRecipe, calib: np.ndarray, check: np.ndarray,
            bundle: Path, role: str, entry_fn) -> dict[str, Any]:
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
        return {**_floor_entry(hold, int8_scores, spec),
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


def eval_quality(bundle: Path, data: Path, precision: str, seed: int, json_path: Path | None,
                 report: Path | None) -> dict[str, Any]:
    """Held-out degradations (evaluation grid, fresh seeds) of ``data/test/good``, scored by the bundle's gate."""
    gate = QualityGate.from_bundle(load_bundle(bundle), threads=1, precision=precision)
    if gate is None:
        raise KenpinError(f"{bundle}: has no quality model; add one with kenpin train-ranker --bundle {bundle} --data DIR")
    paths = list_images(data / "test" / "good")
    if not paths:
        raise KenpinError(f"{data / 'test' / 'good'}: no held-out good images to evaluate on")
    images, _ = read_many(paths, "reading test/good")
    cost = gate_cost(bundle, (images * 3)[:300], precision)
    score, column = _gate_columns(gate)
    table = degradation_table(score, images, seed, column)
    clean = np.asarray(table["clean_scores"])[:, 0]
    for r in table["rows"]:
        r["retake_rate"] = float(np.mean(np.asarray(r["gate_scores"]) < gate.floor))
    out = {"bundle": str(bundle), "precision": precision, "n_images": len(images), "floor": gate.floor,
           "families": [f.to_dict() for f in gate.ranker.families],
           "clean_false_retake_rate": float(np.mean(clean < gate.floor)),
           "cost": cost, "rows": [{k: v for k, v in r.items() if not k.endswith("scores")} for r in table["rows"]]}
    if report is not None:
        out["plot"] = str(plot_strength(table, report / "quality_vs_strength.png", gate.floor))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"quality gate ({precision}) on {len(images)} held-out good images, floor {gate.floor:.3f}: "
          f"clean frames retaken {out['clean_false_retake_rate']:.3f}")
    print(f"  cost per frame: gate {cost['gate']['median_ms']:.2f} ms vs anomaly model ({cost['anomaly_input']}) "
          f"{cost['anomaly']['median_ms']:.2f} ms: {100 * cost['ratio']:.1f} % (medians, side by side)")
    print(f"  {'kind':<13}{'strength':>9} {'path':<6} {'family':<12} {'pair acc':>8} {'gate acc':>8} {'retaken':>8}")
    for r in out["rows"]:
        print(f"  {r['kind']:<13}{r['param']:>9g} {r['path']:<6} {r['family']:<12} {r['pairwise_accuracy']:>8.4f} "
              f"{r['gate_pairwise_accuracy']:>8.4f} {r['retake_rate']:>8.3f}")
    return out


def _gate_columns(gate: QualityGate) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[str], tuple[int, str]]]:
    """A frame → [gate quality, each family's margin], and a kind → (the column that ranks it, its family).
    Kinds no family was trained on are judged by the gate's quality."""
    fams = gate.ranker.families
    if not fams:
        return (lambda f: np.array([gate.score(f)])), (lambda kind: (0, "quality"))
    col = {k: (1 + i, f.name) for i, f in enumerate(fams) for k in f.kinds}

    def score(frame: np.ndarray) -> np.ndarray:
        m = gate.margins(frame)
        return np.concatenate([[m.min()], m])

    return score, (lambda kind: col.get(kind, (0, "(gate)")))


def gate_cost(bundle: Path, frames: list[np.ndarray], precision: str = "int8", anomaly_threads: int = 2) -> dict[str, Any]:
    """Per-frame cost of the gate (its preprocessing included) vs the anomaly model's inspection,
    timed side by side on the same frames, with the station's thread settings."""
    from device.runtime import Inspector
    from kenpin.timing import time_side_by_side

    b = load_bundle(bundle)
    gate = QualityGate.from_bundle(b, threads=1, precision=precision)
    insp = Inspector(b, precision, anomaly_threads)
    t = time_side_by_side({"anomaly": insp.inspect, "gate": gate.score}, frames)
    anomaly_input = f"{b.preprocess.width}x{b.preprocess.height}"
    return {"anomaly_input": anomaly_input, **t, "ratio": t["gate"]["median_ms"] / t["anomaly"]["median_ms"],
            "n_frames": len(frames)}


def eval_grade(bundle: Path, ratings: Path, precision: str, k: int, json_path: Path | None) -> dict[str, Any]:
    """Kendall τ, NDCG@k and pairwise accuracy of the bundle's grade on a rated file (held out from training)."""
    from device.runtime import Inspector

    b = load_bundle(bundle)
    grader = Grader.from_bundle(b, threads=1, precision=precision)
    if grader is None:
        raise KenpinError(f"{bundle}: has no grade model; add one with kenpin train-ranker --role grade --ratings FILE")
    judged = read_judgements(ratings)
    if judged.ratings is None:
        raise KenpinError(f"{ratings}: evaluation needs an image,rating file (better,worse pairs have no scale)")
    if grader.reads_anomaly_model:  # it grades the anomaly model's view of each frame: open that model too
        insp = Inspector(b, precision, 1)
        grade: Callable[[np.ndarray], float] = lambda rgb: insp.grade(rgb, grader)  # noqa: E731
    else:
        grade = grader.grade
    scores = np.array([grade(read_rgb(p)) for p in judged.images])
    m = {"bundle": str(bundle), "ratings": str(ratings), "precision": precision,
         **ranking_metrics(scores, np.asarray(judged.ratings), k)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(m, indent=2) + "\n")
    print(f"grade ({precision}) on {m['n_images']} rated images: Kendall τ {m['kendall_tau']:.4f}, "
          f"NDCG@{k} {m[f'ndcg@{k}']:.4f}, pairwise accuracy {m['pairwise_accuracy']:.4f}")
    return m


def mask_ratings(data: Path, out: Path, seed: int) -> tuple[Path, Path]:
    """Ratings = defect area share of each defective test image's mask; two disjoint halves per defect type."""
    import cv2

    rng = np.random.default_rng(seed)
    halves: list[list[str]] = [["image,rating"], ["image,rating"]]
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        rated = []
        for img in list_images(folder):
            mask = mask_for(data, folder.name, img)
            if mask is not None:
                m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
                rated.append((img, float(np.mean(m > 127))))
        for n, i in enumerate(rng.permutation(len(rated))):
            img, area = rated[i]
            halves[n % 2].append(f"{img.resolve()},{area:.6f}")
    paths = (out / "train.csv", out / "heldout.csv")
    for p, rows in zip(paths, halves):
        if len(rows) < 3:
            raise KenpinError(f"{data / 'test'}: no defective images with masks to rate")
        p.write_text("\n".join(rows) + "\n")
    print(f"wrote {paths[0]} ({len(halves[0]) - 1} images) and {paths[1]} ({len(halves[1]) - 1} images)")
    return paths
