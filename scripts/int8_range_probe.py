#!/usr/bin/env python
"""int8 with 8-bit vs 7-bit weights on this CPU: how closely does int8 rank the parts like fp32?

    .venv/bin/python scripts/int8_range_probe.py [--workdir /tmp/int8-range]

Builds the tests' tiny line and bundle (128 px) twice, once per ``export.reduce_range``, and
prints the int8-vs-fp32 mean |normalized score difference| and Spearman rank agreement over every
test image. On x86 CPUs without VNNI onnxruntime's 8-bit kernels saturate; this shows how much.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from device.images import list_images, read_rgb  # noqa: E402
from device.runtime import Inspector  # noqa: E402
from export.build import build_bundle  # noqa: E402
from tests.conftest import tiny_line_spec, tiny_recipe  # noqa: E402
from training.synthetic_line import generate_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/int8-range")
    work = Path(ap.parse_args().workdir)
    shutil.rmtree(work, ignore_errors=True)
    line = generate_line(work / "line", tiny_line_spec())
    paths = [p for d in sorted((line / "test").iterdir()) for p in list_images(d)]
    for reduce_range in (False, True):
        recipe = tiny_recipe()
        recipe = replace(recipe, export=replace(recipe.export, reduce_range=reduce_range))
        bundle = work / f"bundle-reduce-range-{reduce_range}"
        build_bundle(line, bundle, recipe)
        i8, f32 = Inspector.open(bundle, "int8"), Inspector.open(bundle, "fp32")
        s8 = np.array([i8.inspect(read_rgb(p)).score for p in paths])
        s32 = np.array([f32.inspect(read_rgb(p)).score for p in paths])
        print(f"reduce_range={reduce_range}: {len(paths)} test images, mean |int8 - fp32| "
              f"{np.mean(np.abs(s8 - s32)):.4f}, Spearman {spearmanr(s8, s32)[0]:.4f}", flush=True)


if __name__ == "__main__":
    main()
