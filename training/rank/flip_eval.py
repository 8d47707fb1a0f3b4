"""``kenpin eval-ranker``'s verdict flips: on held-out test frames (good and defective), degraded at the
evaluation strengths, which verdicts the degradation changes, and whether the gate retakes those
frames (recall) and not the others (waste); escapes and false rejects with and without the gate.

A retaken frame is judged on its retake, taken here as the clean frame (the degradation was the
capture's, not the part's); a frame the gate passes is judged as captured.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from device.images import read_rgb
from device.runtime import Inspector
from device.scoring import NORMALIZED_THRESHOLD
from training.dataset import scan_mvtec
from training.rank.degrade import EVAL_GRID, FAMILIES, degrade, to_float
from training.rank.pairs import as_rgb8


@dataclass
class FlipFrames:
    """Every test frame clean (``param`` NaN, kind "clean") and at every evaluation strength."""

    kind: np.ndarray  # str per row
    param: np.ndarray  # float per row
    image: np.ndarray  # index of the test image
    defect: np.ndarray  # bool per row: the image is defective
    quality: np.ndarray
    z: np.ndarray
    retake: np.ndarray  # the gate's decision (floors and, where calibrated, the verdict guard)
    below_floor: np.ndarray  # the floors alone


def judge_frames(insp: Inspector, data: Path, seed: int, grid: dict[str, tuple[float, ...]] = EVAL_GRID) -> FlipFrames:
    """Judge each test image clean and degraded (8-bit path, fresh seeds) with the anomaly model and its gate."""
    gate = insp.gate
    scale = insp.variant.normalization.scale
    tests = scan_mvtec(data, need_test=True).test
    rows: list[tuple[str, float, int, bool, float, float, bool, bool]] = []
    for i, t in enumerate(tqdm(tests, desc="judging degraded test frames", unit="img")):
        rgb = read_rgb(t.path)
        clean = to_float(rgb[..., 0] if np.array_equal(rgb[..., 0], rgb[..., 1]) else rgb)
        versions = [("clean", float("nan"), rgb)]
        for k, (kind, params) in enumerate(grid.items()):
            for j, p in enumerate(params):
                rng = np.random.default_rng([seed, i, k, j])
                versions.append((kind, p, as_rgb8(degrade(clean, kind, p, rng))))
        for kind, p, frame in versions:
            v = insp.judge(frame, threshold=NORMALIZED_THRESHOLD, heat="never")
            z = (v.raw_score - v.raw_threshold) / scale
            rows.append((kind, p, i, t.is_defective, v.quality, z, gate.retakes(v.quality, z), not gate.passes(v.quality)))
    cols = list(zip(*rows))
    return FlipFrames(*(np.array(c) for c in cols))


def _rates(retake: np.ndarray, flips: np.ndarray) -> dict[str, float | None]:
    share = lambda m: round(float(np.mean(retake[m])), 4) if m.any() else None  # noqa: E731
    return {"flip_rate": round(float(np.mean(flips)), 4), "retake_rate": round(float(np.mean(retake)), 4),
            "flipped_retaken": share(flips), "unflipped_retaken": share(~flips), "n": int(len(flips)),
            "n_flipped": int(flips.sum())}


def _errors(verdict: np.ndarray, defect: np.ndarray) -> dict[str, float]:
    """False rejects (good judged defective) and escapes (defects judged good)."""
    return {"false_rejects": round(float(np.mean(verdict[~defect])), 4),
            "escapes": round(float(np.mean(~verdict[defect])), 4)}


def flip_report(f: FlipFrames) -> dict[str, Any]:
    """Per kind and strength, and over all of them: flips, retakes, recall and waste; escapes and false
    rejects on clean frames without the gate and on degraded frames with it (a retake judged clean)."""
    clean = f.kind == "clean"
    base = {int(i): z > 0 for i, z in zip(f.image[clean], f.z[clean])}
    clean_verdict = np.array([base[int(i)] for i in f.image])
    flips = (~clean) & ((f.z > 0) != clean_verdict)
    family = {k: name for name, kinds in FAMILIES.items() for k in kinds}
    rows = []
    for kind in dict.fromkeys(f.kind[~clean]):
        for p in dict.fromkeys(f.param[f.kind == kind]):
            m = (f.kind == kind) & (f.param == p)
            rows.append({"kind": str(kind), "param": float(p), "family": family.get(str(kind), "?"),
                         **_rates(f.retake[m], flips[m]), "floors_only": _rates(f.below_floor[m], flips[m])})
    deg = ~clean
    gated = np.where(f.retake, clean_verdict, f.z > 0)[deg]
    return {"rows": rows,
            "all": {**_rates(f.retake[deg], flips[deg]), "floors_only": _rates(f.below_floor[deg], flips[deg])},
            "clean_retaken": round(float(np.mean(f.retake[clean])), 4),
            "clean_good_retaken": round(float(np.mean(f.retake[clean & ~f.defect])), 4),
            "clean_without_gate": _errors(clean_verdict[clean], f.defect[clean]),
            "degraded_without_gate": _errors((f.z > 0)[deg], f.defect[deg]),
            "degraded_with_gate": _errors(gated, f.defect[deg]),
            "n_images": int(clean.sum()), "n_defective": int((clean & f.defect).sum())}


def print_flips(r: dict[str, Any]) -> None:
    """The verdict-flip table as ``kenpin eval-ranker`` prints it."""
    a = r["all"]
    print(f"verdict flips on {r['n_images']} test images ({r['n_defective']} defective), degraded at held-out strengths:")
    print(f"  flipped frames retaken {a['flipped_retaken']} of {a['n_flipped']} (floors alone "
          f"{a['floors_only']['flipped_retaken']}); unflipped retaken {a['unflipped_retaken']} (floors alone "
          f"{a['floors_only']['unflipped_retaken']}); clean frames retaken {r['clean_retaken']} (good {r['clean_good_retaken']})")
    for key in ("clean_without_gate", "degraded_without_gate", "degraded_with_gate"):
        e = r[key]
        print(f"  {key.replace('_', ' ')}: false rejects {e['false_rejects']:.4f}, escapes {e['escapes']:.4f}")
    print(f"  {'kind':<13}{'strength':>9} {'family':<12}{'flips':>7}{'retaken':>9}{'flip→ret':>9}{'keep→ret':>9}")
    fmt = lambda v: "     -" if v is None else f"{v:>.3f}"  # noqa: E731
    for x in r["rows"]:
        print(f"  {x['kind']:<13}{x['param']:>9g} {x['family']:<12}{x['flip_rate']:>7.3f}{x['retake_rate']:>9.3f}"
              f"{fmt(x['flipped_retaken']):>9}{fmt(x['unflipped_retaken']):>9}")
