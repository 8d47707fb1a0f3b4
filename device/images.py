"""Reading images from disk the one way both training and the station do."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from device.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any OpenCV-readable image as HxWx3 uint8 RGB (gray is replicated to 3 channels)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ImageError(f"{path}: image file is missing or empty")
    # IMREAD_COLOR turns gray, 16-bit and alpha images into 8-bit BGR, so every source looks alike.
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{path}: not an image OpenCV can read (expected PNG, JPEG, BMP, TIFF…)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
