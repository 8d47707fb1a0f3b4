"""The recipe chooses itself: ``kenpin train`` without ``--recipe``.

A newcomer does not know which input size and score fit the line. The candidates are the default
recipe at the frames' own aspect ratio (a tall or wide part is not squashed into a square) at two
pixel budgets, each with and without the texture score. Each is fitted in fp32 on the same
train/good split and judged on validation only — held-out good images against the synthetic
defects painted on them, and the line's real defects in ``train/<defect>/`` when there are any —
never on ``test/``. The highest validation AUROC wins; within AUROC_TIE, fewer validation escapes
at the calibrated threshold, then the smaller input. Not escapes first: the threshold is the 99th
percentile of ~100 held-out good images, so which candidate escapes least hinges on one or two of
them (on ball_screw the first rule chose AUROC 0.949 over 0.988 for 3 synthetic defects out of
96). Every candidate's figures and the reason go into the bundle's manifest.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from device.errors import KenpinError
from device.images import list_images
from device.macs import model_gmacs, pi_model_ms
from device.scoring import ImageScorer, NearestNeighbourScorer, patches_from_map
from training.dataset import scan_mvtec
from training.recipe import Recipe, ScoringSpec

log = logging.getLogger(__name__)

# (name, pixel budget of the model input): the default's 224² and the 384² that small defects needed
# on magnetic_tile (BENCHMARKS.md, "Recipe choice"); more pixels cost model time on the station.
BUDGETS: tuple[tuple[str, int], ...] = (("224", 224 * 224), ("384", 384 * 384))
# Frames this many times larger than the largest budget also get a candidate at their own
# resolution, so a hairline or a pit stays several patches wide; it costs model time per frame
# in proportion (each candidate's MACs and Pi 4 ESTIMATE are recorded).
NATIVE_FACTOR = 1.5
MAX_SIDE = 1280  # longest model input side: beyond it a frame is scaled down (aspect kept)
AUROC_TIE = 0.005  # validation AUROCs closer than this count as equal (about its standard error)


@dataclass(frozen=True)
class Candidate:
    """One recipe tried: its name (budget, texture) and the recipe."""

    name: str
    recipe: Recipe


@dataclass(frozen=True)
class Frames:
    """The geometry of a line's frames: median width/height and median pixel count."""

    aspect: float
    pixels: int


def frame_geometry(data: Path, n: int = 16) -> Frames:
    """Median aspect and size of (up to ``n`` of) the ``train/good`` frames."""
    paths = list_images(data / "train" / "good")
    sizes = [im.shape[:2] for im in (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths[:: max(1, len(paths) // n)][:n])
             if im is not None]
    if not sizes:
        raise KenpinError(f"{data / 'train' / 'good'}: no readable images to choose a recipe from")
    return Frames(float(np.median([w / h for h, w in sizes])), int(np.median([h * w for h, w in sizes])))


def input_size(aspect: float, budget: int) -> tuple[int, int]:
    """(width, height), multiples of 32, about ``budget`` pixels at the frames' aspect ratio."""
    w, h = math.sqrt(budget * aspect), math.sqrt(budget / aspect)
    shrink = min(1.0, MAX_SIDE / max(w, h))  # scale both sides: the aspect survives the cap

    def r32(x: float) -> int:
        return int(max(64, 32 * round(x * shrink / 32)))

    return r32(w), r32(h)


def budgets_for(frames: Frames, budgets: tuple[tuple[str, int], ...] | None = None) -> tuple[tuple[str, int], ...]:
    """The pixel budgets tried: the defaults, and the frames' own size when they are much larger."""
    budgets = budgets or BUDGETS
    if frames.pixels > NATIVE_FACTOR * max(b for _, b in budgets):
        budgets = (*budgets, ("native", frames.pixels))
    return budgets


def candidates(base: Recipe, aspect: float, budgets: tuple[tuple[str, int], ...] | None = None) -> list[Candidate]:
    """The default recipe at the frames' aspect, per pixel budget, without and with the texture score."""
    out = []
    for _, budget in budgets or BUDGETS:
        w, h = input_size(aspect, budget)
        for texture in (False, True):
            r = dataclasses.replace(base, preprocess=dataclasses.replace(base.preprocess, width=w, height=h),
                                    scoring=ScoringSpec(texture=texture))
            out.append(Candidate(f"{w}x{h}{' + texture' if texture else ''}", r))
    return out


def _real_defect_scores(model: Any, v: Any, recipe: Recipe, data: Path) -> np.ndarray:
    """fp32 image scores of the line's own defects in ``train/<defect>/`` (empty when there are none)."""
    import torch

    from training.metric.pair_sampling import labeled_defects

    found = labeled_defects(data)
    if not found:
        return np.empty(0)
    scorer = ImageScorer(NearestNeighbourScorer(v.bank), v.texture, v.fusion)
    out = []
    with torch.inference_mode():
        for d in found:
            fmap = model(torch.from_numpy(recipe.preprocess(d.image))).numpy()
            out.append(scorer.score(patches_from_map(fmap))[0])
    return np.asarray(out, np.float64)


def judge(c: Candidate, data: Path, max_pi4_ms: float | None = None) -> dict[str, Any]:
    """Fit one candidate in fp32 and measure it on validation; a candidate whose model alone is
    estimated above ``max_pi4_ms`` on a Pi 4 is recorded with its cost and not fitted."""
    from export.build import fit_fp32, prepare_inputs
    from training.features import PatchEmbedder

    t0 = time.perf_counter()
    gmacs = _gmacs(PatchEmbedder(c.recipe.features).eval(), c.recipe)
    ms = None if gmacs is None else round(pi_model_ms(gmacs, "Raspberry Pi 4"), 1)
    row = {"name": c.name, "input": f"{c.recipe.preprocess.width}x{c.recipe.preprocess.height}",
           "texture": c.recipe.scoring.texture, "pixels": c.recipe.preprocess.width * c.recipe.preprocess.height,
           "model_gmacs": gmacs, "pi4_model_ms_estimate": ms}
    if max_pi4_ms is not None and ms is not None and ms > max_pi4_ms:
        return {**row, "over_cost": True, "seconds": round(time.perf_counter() - t0, 1)}
    inputs = prepare_inputs(data, c.recipe, probes=False)
    model, _, v = fit_fp32(inputs, c.recipe)
    real = _real_defect_scores(model, v, c.recipe, data)
    bad = np.r_[v.synthetic_scores, real]
    y = np.r_[np.zeros(len(v.holdout_scores)), np.ones(len(bad))]
    t = v.normalization.threshold
    return {**row, "validation_auroc": float(roc_auc_score(y, np.r_[v.holdout_scores, bad])),
            "validation_escape_rate": float(np.mean(bad <= t)),
            "synthetic_escape_rate": float(np.mean(v.synthetic_scores <= t)),
            "real_defects": int(len(real)), "real_escape_rate": float(np.mean(real <= t)) if len(real) else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def _gmacs(model: Any, recipe: Recipe) -> float | None:
    """The candidate's cost per frame: MACs of its model exported as the station would run it
    (counted before fitting, so a recipe's 1x1 reduction, a fraction of a percent, is left out)."""
    import tempfile

    from export.onnx_export import export_embedder

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        export_embedder(model, path, recipe.preprocess.height, recipe.preprocess.width)
        g = model_gmacs(path)
    return None if g is None else round(g, 3)


def _rank_key(row: dict[str, Any], best_auroc: float) -> tuple[bool, float, int]:
    return (row["validation_auroc"] < best_auroc - AUROC_TIE, row["validation_escape_rate"], row["pixels"])


def choose_recipe(data: Path, base: Recipe | None = None, budgets: tuple[tuple[str, int], ...] | None = None,
                  max_pi4_ms: float | None = None) -> tuple[Recipe, dict[str, Any]]:
    """The candidate with the best validation AUROC (ties: fewer escapes, smaller input); the
    record of every candidate and why. ``max_pi4_ms``: leave out candidates whose model alone is
    estimated slower than that per frame on a Raspberry Pi 4 (the line's pace)."""
    if max_pi4_ms is not None and not max_pi4_ms > 0:
        raise KenpinError(f"--max-pi4-ms {max_pi4_ms}: must be a positive number of milliseconds per frame")
    scan_mvtec(data)  # a folder that is not a dataset gets its one sentence before any fitting
    base = base if base is not None else Recipe()
    frames = frame_geometry(data)
    aspect = frames.aspect
    cands = candidates(base, aspect, budgets_for(frames, budgets))
    rows = [_judged(c, data, max_pi4_ms) for c in cands]
    fitted = [i for i, r in enumerate(rows) if not r.get("over_cost")]
    if not fitted:
        cheapest = min(rows, key=lambda r: r["pi4_model_ms_estimate"])
        raise KenpinError(f"--max-pi4-ms {max_pi4_ms:g}: every candidate's model is estimated slower on a Pi 4 "
                          f"(the cheapest, {cheapest['name']}, {cheapest['pi4_model_ms_estimate']:.0f} ms); "
                          "raise it or give a --recipe with a smaller input")
    top = max(rows[i]["validation_auroc"] for i in fitted)
    best = min(fitted, key=lambda i: _rank_key(rows[i], top))
    n_real = rows[best]["real_defects"]
    limit = f"; candidates over {max_pi4_ms:g} ms on a Pi 4 (ESTIMATE) left out" if len(fitted) < len(rows) else ""
    reason = (f"highest validation AUROC ({rows[best]['validation_auroc']:.4f}; held-out good vs synthetic defects"
              f"{f' and {n_real} real ones from train/' if n_real else ''}; AUROCs within {AUROC_TIE} tie, then fewer "
              f"escapes at the calibrated threshold, then the smaller input{limit}); never test/")
    record = {"chosen": rows[best]["name"], "frame_aspect": round(aspect, 3), "frame_pixels": frames.pixels,
              "max_pi4_ms": max_pi4_ms, "reason": reason, "candidates": rows}
    return cands[best].recipe, record


def _judged(c: Candidate, data: Path, max_pi4_ms: float | None) -> dict[str, Any]:
    """Judge one candidate, saying what it measured (or that it was left out for its cost)."""
    log.info("recipe choice: candidate %s", c.name)
    r = judge(c, data, max_pi4_ms)
    cost = "" if r["pi4_model_ms_estimate"] is None else f"model ESTIMATE {r['pi4_model_ms_estimate']:.0f} ms on a Pi 4"
    if r.get("over_cost"):
        print(f"  candidate {c.name}: left out, {cost} > --max-pi4-ms {max_pi4_ms:g}", flush=True)
    else:
        print(f"  candidate {c.name}: validation AUROC {r['validation_auroc']:.4f}, escapes "
              f"{r['validation_escape_rate']:.3f} ({r['seconds']:.0f} s{', ' + cost if cost else ''})", flush=True)
    return r
