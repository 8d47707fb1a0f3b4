"""Area-wide synthetic defects: what a painted scratch or spot is not.

Real lines also reject parts whose *surface as a whole* is wrong: uneven glaze or shading, a
patch of foreign finish, a region ground smoother or rougher than the rest. The local painters
(``training.defects``, CutPaste, noise blobs) cover 0.2–5 % of an image; these cover 10–50 %, with
soft edges, and change the statistics of a region rather than drawing an object on it. A
validation set of local defects alone cannot tell whether an image score sees such changes.

Every painter takes an HxWx3 uint8 RGB image and returns (image, mask HxW uint8 0/255).
"""
from __future__ import annotations

import cv2
import numpy as np

from training.defects import composite
from training.metric.pair_sampling import _smooth_noise, defect_negative, paint_noise_texture

AREA_KINDS: tuple[str, ...] = ("shading", "finish", "large_texture")


def _area_blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A soft, irregular blob (HxW float32 opacity 0–1) covering 10–50 % of the image."""
    noise = _smooth_noise(rng, h, w, int(rng.integers(1, 4)), octaves=2)
    frac = rng.uniform(0.10, 0.50)
    blob = (noise >= np.quantile(noise, 1 - frac)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(blob, (0, 0), max(1.0, min(h, w) / 24)) * 1.2, 0, 1)


def paint_shading(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uneven brightness: a large soft region 15–40 % darker or lighter than the part around it."""
    h, w = image.shape[:2]
    gain = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.4)
    target = np.clip(image.astype(np.float32) * gain, 0, 255)
    return composite(image, _area_blob(rng, h, w), target)


def paint_finish(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A region of another surface finish: smoothed (polished, smeared) or roughened (grainy)."""
    h, w = image.shape[:2]
    src = image.astype(np.float32)
    if rng.random() < 0.5:
        target = cv2.GaussianBlur(src, (0, 0), rng.uniform(1.5, 3.5))
    else:
        grain = rng.standard_normal((h, w)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.6, 1.5))
        target = src + rng.uniform(12, 30) * (grain / max(1e-6, float(grain.std())))[..., None]
    return composite(image, _area_blob(rng, h, w), np.clip(target, 0, 255))


def paint_large_texture(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The noise-blob painter at 5x its local size: foreign texture over 5–25 % of the image."""
    return paint_noise_texture(image, rng, scale=5.0)


_PAINTERS = {"shading": paint_shading, "finish": paint_finish, "large_texture": paint_large_texture}


def paint_area_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """An area-wide defect of a kind drawn uniformly from AREA_KINDS: (image, mask, kind)."""
    kind = AREA_KINDS[int(rng.integers(len(AREA_KINDS)))]
    return (*_PAINTERS[kind](image, rng), kind)


def validation_defect(image: np.ndarray, rng: np.random.Generator,
                      donors: list[np.ndarray] | tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """A validation negative: local (any painter of ``defect_negative``) or area-wide, half each."""
    if rng.random() < 0.5:
        return defect_negative(image, rng, 1.0, donors)
    out, mask, _ = paint_area_defect(image, rng)
    return out, mask
