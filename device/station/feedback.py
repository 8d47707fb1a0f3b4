"""Feedback for retraining: a wrongly judged part's kept image copied into an MVTec-layout folder
with its right label, and a line in ``labels.csv``.

A station with ``products:`` keeps each product's feedback apart (``feedback/product-<n>/``):
each product has its own bundle, so its images retrain only its own model. A station without
them keeps the one folder it always had (``feedback/``).
"""
from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

from device.errors import KenpinError

FEEDBACK_LABELS = {"good": "good", "defect": "defect"}


def keep_feedback(store: Any, data_dir: Path, per_product: bool, verdict_id: int, correct: str, who: str) -> Path:
    """Copy verdict ``verdict_id``'s kept frame under ``data_dir/feedback`` as ``correct``; audited.
    Returns the copy. A KenpinError says why a verdict cannot become feedback."""
    if correct not in FEEDBACK_LABELS:
        raise KenpinError(f"correct label {correct!r}: must be 'good' or 'defect'")
    rec = store.get(int(verdict_id))
    if rec is None:
        raise KenpinError(f"verdict {verdict_id}: no such verdict in the log")
    if rec.frame_ref is None:
        raise KenpinError(f"verdict {verdict_id}: its image was not kept (sampled out or removed by retention), "
                          "so it cannot become feedback")
    src = store.image_path(rec.frame_ref)
    root = Path(data_dir) / "feedback"
    if per_product:
        root = root / f"product-{rec.product}"
    dst = root / "train" / FEEDBACK_LABELS[correct] / f"{rec.id:08d}{src.suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    labels = root / "labels.csv"
    new = not labels.exists()
    with open(labels, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["image", "label", "verdict_id", "station_verdict", "score", "bundle_id", "who", "time"])
        w.writerow([dst.relative_to(root).as_posix(), correct, rec.id, rec.verdict, f"{rec.score:.4f}",
                    rec.bundle_id, who, f"{time.time():.3f}"])
    image = dst.relative_to(Path(data_dir) / "feedback").as_posix()
    store.audit("mark_wrong", {"verdict_id": rec.id, "station_verdict": rec.verdict, "correct": correct,
                               "product": rec.product, "image": image}, who)
    return dst
