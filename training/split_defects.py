"""``kenpin split-defects``: a dataset with K real defects per type moved from ``test/`` to ``train/``.

A plant has some confirmed rejects; the benchmarks have only ``test/`` defects. This makes the
protocol that cannot leak: a new MVTec-layout folder (symbolic links, not copies) whose
``train/<defect>/`` holds K seeded picks of each defect type, with their masks; every other image
stays in ``test/``, and figures are reported on what stays. The source folder is never written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.errors import KenpinError
from device.images import list_images
from training.dataset import mask_for, scan_mvtec

SPLIT_FILE = "SPLIT.json"


@dataclass(frozen=True)
class SplitSpec:
    """What to move: ``per_type`` images of each defect type, picked with ``seed``."""

    per_type: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.per_type, int) or self.per_type < 0:
            raise KenpinError(f"--per-type {self.per_type!r}: use a whole number ≥ 0")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _picks(data: Path, spec: SplitSpec) -> dict[str, list[Path]]:
    """Each defect type's test images that move to train/, a seeded pick; error if a type has too few."""
    ds = scan_mvtec(data, need_test=True)
    rng = np.random.default_rng(spec.seed)
    picks = {}
    for defect in ds.defect_types:
        images = [t.path for t in ds.test if t.defect == defect]
        if spec.per_type > len(images):
            raise KenpinError(f"{data / 'test' / defect}: --per-type {spec.per_type} but this defect type has only "
                              f"{len(images)} images; use at most {len(images)} (some must stay in test/)")
        if spec.per_type == len(images):
            raise KenpinError(f"{data / 'test' / defect}: --per-type {spec.per_type} would move all {len(images)} "
                              f"images of this type and leave none to report on; use at most {len(images) - 1}")
        picks[defect] = sorted(images[i] for i in rng.permutation(len(images))[: spec.per_type])
    return picks


def _populate(data: Path, staged: Path, picks: dict[str, list[Path]]) -> dict[str, int]:
    """Link every image of ``data`` into ``staged``: picked defects under train/, the rest where they were."""
    moved = {p for ps in picks.values() for p in ps}
    for img in list_images(data / "train" / "good"):
        _link(img, staged / "train" / "good" / img.name)
    for sub in sorted(p for p in (data / "train").iterdir() if p.is_dir() and p.name != "good"):
        for img in list_images(sub):  # real defects the source already had in train/ stay there
            _link(img, staged / "train" / sub.name / img.name)
    kept: dict[str, int] = {}
    for sub in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        for img in list_images(sub):
            part = "train" if img in moved else "test"
            _link(img, staged / part / sub.name / img.name)
            if part == "test":
                kept[sub.name] = kept.get(sub.name, 0) + 1
            mask = None if sub.name == "good" else mask_for(data, sub.name, img)
            if mask is not None:
                _link(mask, staged / "ground_truth" / sub.name / mask.name)
    for extra in ("README.md", "LICENSE", "license.txt"):
        if (data / extra).is_file():
            _link(data / extra, staged / extra)
    return kept


def split_defects(data: Path, out: Path, spec: SplitSpec) -> dict[str, object]:
    """Write the split dataset to ``out`` (which must not exist) atomically; returns what it recorded."""
    if out.exists():
        raise KenpinError(f"{out}: already exists; choose a new --out (nothing was changed)")
    if out.resolve().is_relative_to(data.resolve()):
        raise KenpinError(f"{out}: inside the source dataset {data}; put the split beside it")
    picks = _picks(data, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        kept = _populate(data, staged, picks)
        record = {"source": str(data.resolve()), "per_type": spec.per_type, "seed": spec.seed,
                  "moved_to_train": {d: [p.name for p in ps] for d, ps in picks.items()},
                  "left_in_test": kept,
                  "rule": "figures are reported on test/ only; train/<defect>/ may be used by training"}
        (staged / SPLIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        staged.rename(out)  # one rename: the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return record
