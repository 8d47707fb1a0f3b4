"""``kenpin demo``: the whole path on a generated sample line, no camera, GPU or download.

Generates a deterministic line of procedural parts (good ones and six kinds of defects), trains
on its good parts, exports the int8 bundle, inspects the held-out parts and prints the summary.
"""
from __future__ import annotations

import time
from pathlib import Path

from kenpin.pipeline import evaluate_and_report, train_and_report
from training.recipe import Recipe
from training.synthetic_line import LineSpec, generate_line


def run_demo(workdir: Path, seed: int = 0) -> int:
    """Run the demo in ``workdir``; exit status 0 when the line was inspected."""
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = LineSpec(seed=seed)
    print(f"[1/3] generating the sample line (seed {seed}) in {workdir / 'line'}", flush=True)
    line = generate_line(workdir / "line", spec)
    print("[2/3] training on train/good, exporting the int8 bundle", flush=True)
    bundle = workdir / "bundle"
    train_and_report(line, bundle, Recipe())
    print("[3/3] inspecting the held-out parts with the int8 bundle", flush=True)
    evaluate_and_report(bundle, line, "int8", workdir / "eval.json", workdir / "report")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; metrics: {workdir / 'eval.json'}")
    return 0
