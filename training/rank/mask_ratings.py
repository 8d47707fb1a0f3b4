"""``kenpin mask-ratings``: a rating file from ground-truth masks, for training and checking a grade."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.errors import KenpinError
from device.images import list_images
from training.dataset import mask_for


def mask_ratings(data: Path, out: Path, seed: int) -> tuple[Path, Path]:
    """Ratings = defect area share of each defective test image's mask; two disjoint halves per defect type."""
    import cv2

    rng = np.random.default_rng(seed)
    halves: list[list[str]] = [["image,rating"], ["image,rating"]]
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        rated = []
        for img in list_images(folder):
            mask = mask_for(data, folder.name, img)
            if mask is not None:
                m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
                rated.append((img, float(np.mean(m > 127))))
        for n, i in enumerate(rng.permutation(len(rated))):
            img, area = rated[i]
            halves[n % 2].append(f"{img.resolve()},{area:.6f}")
    paths = (out / "train.csv", out / "heldout.csv")
    for p, rows in zip(paths, halves):
        if len(rows) < 3:
            raise KenpinError(f"{data / 'test'}: no defective images with masks to rate")
        p.write_text("\n".join(rows) + "\n")
    print(f"wrote {paths[0]} ({len(halves[0]) - 1} images) and {paths[1]} ({len(halves[1]) - 1} images)")
    return paths
