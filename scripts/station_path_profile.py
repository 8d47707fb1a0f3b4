"""Where a frame's station-path time goes: preprocess, bare model, search, judge, whole path.

    .venv/bin/python scripts/station_path_profile.py BUNDLE DATASET_DIR [--cv-threads N]

Times each part side by side on every 10th test image (kenpin.timing), so a noisy machine slows
them all alike, and prints medians in ms and the station ÷ bare-model ratio.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI sets it

import cv2  # noqa: E402

from device.images import list_images, read_rgb  # noqa: E402
from device.runtime import Inspector  # noqa: E402
from kenpin.timing import time_side_by_side  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("data", help="MVTec-layout dataset; its test/ images are the frames")
    ap.add_argument("--cv-threads", type=int, help="cv2.setNumThreads before timing (default: OpenCV's)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.cv_threads is not None:
        cv2.setNumThreads(a.cv_threads)
    insp = Inspector.open(a.bundle, "int8")
    paths = [p for d in sorted(Path(a.data, "test").iterdir()) if d.is_dir() for p in list_images(d)]
    frames = [read_rgb(p) for p in paths[::10][:40]]
    x = insp.preprocess(frames[0])
    patches = {id(f): insp.embed(f) for f in frames}  # each frame's own, as the station searches them
    res = time_side_by_side({
        "station path": lambda f: insp.inspect(f),
        "bare model": lambda f: insp.embedder(x),
        "preprocess": lambda f: insp.preprocess(f),
        "search": lambda f: insp.scorer.distances(patches[id(f)]),
        "judge (search + texture + verdict)": lambda f: insp.judge(f, patches[id(f)], heat="never"),
    }, frames * a.repeat)
    for k, v in res.items():
        print(f"{k:36s} {v['median_ms']:6.2f} ms")
    print(f"station ÷ bare model: {res['station path']['median_ms'] / res['bare model']['median_ms']:.2f}")


if __name__ == "__main__":
    main()
