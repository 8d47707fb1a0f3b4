"""``kenpin bench profile``: where a frame's station-path time goes: preprocess, bare model, search, judge, whole path.

    kenpin bench profile --bundle BUNDLE --data DATASET_DIR [--cv-threads N]

Times each part side by side on every 10th test image (:mod:`device.bench.timing`), so a noisy
machine slows them all alike, and prints medians in ms and the station ÷ bare-model ratio.
"""
from __future__ import annotations

from pathlib import Path

import cv2

from device.bench.timing import time_side_by_side
from device.images import list_images, read_rgb
from device.runtime import Inspector


def run_profile(bundle: Path, data: Path, cv_threads: int | None = None, repeat: int = 3) -> int:
    """Print the median milliseconds of each part of the station path on DATA/test/*; exit 0."""
    if cv_threads is not None:
        cv2.setNumThreads(cv_threads)
    insp = Inspector.open(bundle, "int8")
    paths = [p for d in sorted((data / "test").iterdir()) if d.is_dir() for p in list_images(d)]
    frames = [read_rgb(p) for p in paths[::10][:40]]
    x = insp.preprocess(frames[0])
    patches = {id(f): insp.embed(f) for f in frames}  # each frame's own, as the station searches them
    res = time_side_by_side({
        "station path": lambda f: insp.inspect(f),
        "bare model": lambda f: insp.embedder(x),
        "preprocess": lambda f: insp.preprocess(f),
        "search": lambda f: insp.scorer.distances(patches[id(f)]),
        "judge (search + texture + verdict)": lambda f: insp.judge(f, patches[id(f)], heat="never"),
    }, frames * repeat)
    for k, v in res.items():
        print(f"{k:36s} {v['median_ms']:6.2f} ms")
    print(f"station ÷ bare model: {res['station path']['median_ms'] / res['bare model']['median_ms']:.2f}")
    return 0
