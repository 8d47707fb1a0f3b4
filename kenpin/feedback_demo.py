"""The feedback loop on the generated line, end to end: station → marks → ``kenpin retrain`` → compare.

1. The demo's bundle (trained on the line's good parts) judges a shift of production parts on the
   station daemon (a replay camera; every frame kept, as PNG, so every wrong verdict can be marked
   and the marked image is the frame as judged).
2. An operator marks each wrong verdict — here the generator knows each part's truth — through
   the same code the dashboard's "mark wrong" button calls (``device.station.feedback``).
3. ``kenpin retrain`` builds a new bundle from those marks and scores both on a later shift that
   neither saw, side by side.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.images import list_images, read_rgb
from device.station.feedback import keep_feedback
from device.station.store import VerdictStore
from kenpin.demo import demo_recipe, replay_folder, run_station
from kenpin.retrain import retrain
from training.synthetic_line import LineSpec, generate_line

SHIFT = dict(n_train=4, n_test_good=60, n_test_per_defect=20)  # parts the station judges and operators mark
# The later shift the two bundles are compared on: more good parts, since one false reject in 60
# is already 1.7 points and a 1 % target needs hundreds to show.
LATER = dict(n_train=4, n_test_good=300, n_test_per_defect=40)


def _thumb(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _truth(replay: Path) -> tuple[np.ndarray, list[str]]:
    """Thumbnails of the replayed parts and each one's kind (the replay names say it)."""
    paths = list_images(replay)
    return np.stack([_thumb(read_rgb(p)) for p in paths]), [p.name.split("_", 1)[1].rsplit("_", 1)[0] for p in paths]


def mark_wrong_verdicts(data_dir: Path, replay: Path) -> dict[str, int]:
    """Mark every verdict the station got wrong, as an operator on the dashboard would."""
    thumbs, kinds = _truth(replay)
    store = VerdictStore(data_dir)
    marked = {"good": 0, "defect": 0}
    try:
        for rec in store.query(limit=10_000):
            if rec.frame_ref is None or rec.verdict not in ("ok", "defect"):
                continue
            # The kept frame is the replayed part: the nearest thumbnail names its kind.
            near = int(np.argmin(((thumbs - _thumb(read_rgb(store.image_path(rec.frame_ref)))) ** 2).sum(axis=(1, 2, 3))))
            truth = "good" if kinds[near] == "good" else "defect"
            if (truth == "good") != (rec.verdict == "ok"):
                keep_feedback(store, data_dir, False, rec.id, truth, "kenpin feedback demo (the generator's truth)")
                marked[truth] += 1
    finally:
        store.close()
    return marked


def run_feedback_loop(workdir: Path, seed: int = 0) -> dict[str, Any]:
    """The loop in ``workdir``; returns the running and retrained bundles' figures on the later shift."""
    from export.build import build_bundle

    line = generate_line(workdir / "line", LineSpec(seed=seed))
    bundle = workdir / "bundle"
    if not (bundle / "manifest.json").exists():
        print("[loop 1/4] training the demo's bundle on the line's good parts", flush=True)
        build_bundle(line, bundle, demo_recipe())
    shift = generate_line(workdir / "shift-1", LineSpec(seed=seed + 1, **SHIFT))
    print("[loop 2/4] the station judges a production shift (every image kept)", flush=True)
    replay = replay_folder(shift, workdir / "shift-1-replay", per_kind=10_000)
    shutil.rmtree(workdir / "station-data", ignore_errors=True)
    # Every frame kept, losslessly: what the operators mark is exactly what the station judged.
    data_dir = run_station(workdir, shift, bundle, replay, ok_image_fraction=1.0, frame_format="png")
    marked = mark_wrong_verdicts(data_dir, replay)
    print(f"[loop 3/4] marked {marked['defect']} escape(s) as defective and {marked['good']} false reject(s) as good",
          flush=True)
    later = generate_line(workdir / "shift-2", LineSpec(seed=seed + 2, **LATER))
    print("[loop 4/4] kenpin retrain, then both bundles on a later shift neither saw", flush=True)
    out = workdir / "retrained"
    shutil.rmtree(out, ignore_errors=True)
    result = retrain(bundle, data_dir / "feedback", line, out, later, None)
    return {"marks": marked, **result}
