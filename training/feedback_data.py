"""The dataset a retrain fits on: the original one plus the verdicts operators marked wrong.

The station keeps marked verdicts as ``feedback/train/good/`` (false rejects) and
``feedback/train/defect/`` (escapes), with ``labels.csv`` (``device.station.feedback``). A retrain
links them beside the original dataset: marked good parts join ``train/good/`` (the bank and the
held-out good that set the threshold), marked defects become the real-defect type ``marked`` (no
mask: the metric learning guesses where, ``training.metric.pseudo_masks``). Links, not copies;
neither source folder is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from device.errors import KenpinError
from device.images import list_images
from device.station.feedback import FEEDBACK_LABELS

MARKED_TYPE = "marked"  # train/<type>/ the marked defects take in the merged dataset


@dataclass(frozen=True)
class Feedback:
    """The marked images of one feedback folder."""

    good: list[Path]
    defect: list[Path]


def read_feedback(folder: Path) -> Feedback:
    """The marked images under ``folder`` (a station's feedback folder); a layout that is not the
    station's (``train/good``, ``train/defect``) is an error naming what is wrong."""
    train = folder / "train"
    if not folder.is_dir():
        raise KenpinError(f"--feedback {folder}: no such folder; copy the station's feedback folder "
                          f"(<station.data_dir>/feedback, or feedback/product-<n>) and point --feedback at it")
    if not train.is_dir():
        raise KenpinError(f"--feedback {folder}: no train/ folder; a feedback folder holds train/good/ and "
                          f"train/defect/ (the station writes them when verdicts are marked wrong)")
    unknown = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in FEEDBACK_LABELS)
    if unknown:
        raise KenpinError(f"--feedback {folder}: train/{unknown[0]}/ is not a feedback label; use train/good/ "
                          f"and train/defect/ only")
    fb = Feedback(*(list_images(train / label) if (train / label).is_dir() else [] for label in ("good", "defect")))
    if not fb.good and not fb.defect:
        raise KenpinError(f"--feedback {folder}: no marked images in train/good/ or train/defect/; mark wrong "
                          f"verdicts on the dashboard first")
    return fb


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def merged_dataset(data: Path, feedback: Feedback, dest: Path) -> Path:
    """``dest``: ``data`` (linked) with the feedback's good images in train/good/ and its defects in
    train/marked/. ``data``'s test/ and ground_truth/ are linked too (masks are checked against both)."""
    good = data / "train" / "good"
    if not list_images(good):
        raise KenpinError(f"--data {data}: no images in train/good/; give the dataset the running bundle was "
                          f"trained on")
    if (data / "train" / MARKED_TYPE).exists():
        raise KenpinError(f"--data {data}: has train/{MARKED_TYPE}/ already, the name retraining gives the "
                          f"marked defects; rename that folder")
    for path in list_images(good):
        _link(path, dest / "train" / "good" / path.name)
    for sub in sorted(p for p in (data / "train").iterdir() if p.is_dir() and p.name != "good"):
        _link(sub, dest / "train" / sub.name)
    for path in feedback.good:
        _link(path, dest / "train" / "good" / f"feedback_{path.name}")
    for path in feedback.defect:
        _link(path, dest / "train" / MARKED_TYPE / path.name)
    for name in ("test", "ground_truth"):
        if (data / name).is_dir():
            _link(data / name, dest / name)
    return dest
