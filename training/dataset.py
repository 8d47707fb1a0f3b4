"""A dataset is a pure function of the MVTec AD folder layout."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.errors import ImageError, KenpinError
from device.images import list_images, read_rgb
from device.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestImage:
    """One image of ``test/``: its defect type ("good" for defect-free) and mask, if any."""

    path: Path
    defect: str
    mask: Path | None = None

    @property
    def is_defective(self) -> bool:
        return self.defect != "good"


@dataclass(frozen=True)
class MVTecSet:
    """The images of one MVTec-layout folder."""

    root: Path
    train_good: list[Path]
    test: list[TestImage] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        return sorted({t.defect for t in self.test if t.is_defective})


def mask_for(root: Path, defect: str, image: Path) -> Path | None:
    """The ground-truth mask of a defective image (MVTec naming), or None where there is none."""
    for suffix in (".png", image.suffix):
        p = root / "ground_truth" / defect / f"{image.stem}_mask{suffix}"
        if p.is_file():
            return p
    return None


def scan_mvtec(root: str | Path, need_test: bool = False) -> MVTecSet:
    """List ``train/good`` and ``test/*`` of an MVTec-layout folder; KenpinError if it is not one."""
    root = Path(root)
    if not root.is_dir():
        raise KenpinError(f"{root}: dataset folder does not exist")
    train = list_images(root / "train" / "good")
    if not train and not (root / "test").is_dir():
        raise KenpinError(
            f"{root}: not an MVTec-layout dataset (expected train/good/ with images, test/good/, test/<defect>/)"
        )
    if not train and not need_test:
        raise KenpinError(f"{root / 'train' / 'good'}: no images to learn good parts from")
    test: list[TestImage] = []
    test_dir = root / "test"
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []:
        for img in list_images(sub):
            mask = None if sub.name == "good" else mask_for(root, sub.name, img)
            test.append(TestImage(img, sub.name, mask))
    if need_test and not test:
        raise KenpinError(f"{test_dir}: no test images (expected test/good/ and test/<defect>/)")
    if need_test and not any(t.is_defective for t in test) or need_test and all(t.is_defective for t in test):
        raise KenpinError(f"{test_dir}: evaluation needs both good and defective test images")
    return MVTecSet(root, train, test)


def read_many(paths: list[Path], desc: str = "reading") -> tuple[list[np.ndarray], list[Path]]:
    """Read images, skipping unreadable ones with a warning naming them; error if none is readable."""
    images, kept, bad = [], [], []
    for p in tqdm(paths, desc=desc, unit="img", leave=False):
        try:
            images.append(read_rgb(p))
            kept.append(p)
        except ImageError as e:
            bad.append(str(e))
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), "; ".join(bad[:10]))
    if not images:
        where = paths[0].parent if paths else "(no files)"
        raise KenpinError(f"{where}: none of the {len(paths)} images could be read")
    return images, kept


def stack_inputs(images: list[np.ndarray], pre: Preprocess) -> np.ndarray:
    """Preprocess a list of frames into one Nx3xHxW float32 array."""
    return np.concatenate([pre(im) for im in images], axis=0)
