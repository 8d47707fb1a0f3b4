"""``kenpin demo``: the whole path on a generated sample line, no camera, GPU or download.

Generates a deterministic line of procedural parts (good ones and six kinds of defects), trains
on its good parts, exports the int8 bundle, inspects the held-out parts and prints the summary.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from device.preprocess import Preprocess

from kenpin.pipeline import evaluate_and_report, train_and_report
from training.recipe import Recipe
from training.synthetic_line import LineSpec, generate_line


def demo_recipe() -> Recipe:
    """The defaults at 320 px: the line's faint spots and thin scratches are a few pixels wide.

    Chosen with ``kenpin tune`` on the line's train/good (held-out good vs painted defects):
    224 px 0.927, 256 px 0.983, 320 px 0.998, 384 px 0.991 synthetic-defect AUROC.
    32 int8 calibration images instead of 64: onnxruntime's histogram calibrators hold every
    activation of every image in memory, and the demo must fit a small laptop.
    """
    r = Recipe()
    return replace(r, preprocess=Preprocess(320, 320), export=replace(r.export, quant_images=32))


def run_demo(workdir: Path, seed: int = 0) -> int:
    """Run the demo in ``workdir``; exit status 0 when the line was inspected."""
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = LineSpec(seed=seed)
    print(f"[1/3] generating the sample line (seed {seed}) in {workdir / 'line'}", flush=True)
    line = generate_line(workdir / "line", spec)
    print("[2/3] training on train/good, exporting the int8 bundle", flush=True)
    bundle = workdir / "bundle"
    train_and_report(line, bundle, demo_recipe())
    print("[3/3] inspecting the held-out parts with the int8 bundle", flush=True)
    evaluate_and_report(bundle, line, "int8", workdir / "eval.json", workdir / "report")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; metrics: {workdir / 'eval.json'}")
    return 0
