"""Training batches for metric learning: two views of each good image, a defect on some second views.

Per good image of a step: view 1 is the image under a nuisance, view 2 the same image under
another nuisance, and for ``defect_fraction`` of them a painted defect (``defect_negative``, or for
``area_fraction`` of those an area-wide one from ``training.area_defects``) or, where the dataset
has some, a real few-shot defect from ``train/<defect>/``. Both views are cut
at the same crop window (around the defect when there is one).

Labels, per patch of the embedder's grid (what ``training.metric.losses`` takes):

- a good patch has the id of its place (image, row, column), the same in both views: the two
  views of one place are the positive pair, so nuisance is what the embedding learns to ignore;
- a defect patch has an id of its own and is flagged in ``negatives``: it is pushed away from
  good patches, but good patches of different places are never pushed apart;
- a patch only partly covered by a defect is ``IGNORE``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.preprocess import Preprocess
from training.area_defects import paint_area_defect
from training.metric.pair_sampling import IGNORE, NuisanceSpec, defect_negative, nuisance, patch_labels


@dataclass(frozen=True)
class FewShot:
    """A real defective training image at model input size, with its mask (HxW 0/255)."""

    image: np.ndarray
    mask: np.ndarray


@dataclass
class Batch:
    """Model inputs (2B x 3 x h x w: B first views, then B second views) and per-row labels."""

    inputs: np.ndarray
    labels: np.ndarray  # (2B * gh * gw,) in the row order of the embeddings, or (2B,) image level
    images: np.ndarray  # same shape: which image each row shows (both views share it); IGNORE rows too
    negatives: np.ndarray  # bool, same shape: defect rows
    n_defect_views: int


def resize_all(images: list[np.ndarray], pre: Preprocess) -> list[np.ndarray]:
    """Frames at the model's input size (the same area resize the station does), still uint8."""
    return [cv2.resize(im, (pre.width, pre.height), interpolation=cv2.INTER_AREA) for im in images]


def normalize(images: list[np.ndarray], pre: Preprocess) -> np.ndarray:
    """uint8 HxWx3 images already at input size → Nx3xHxW float32, as ``Preprocess`` does."""
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _crop_origin(mask: np.ndarray, crop_hw: tuple[int, int], stride: int,
                 rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner (on the patch grid) of a crop; it contains the defect's centre when there is one."""
    starts = [np.arange(0, full - c + 1, stride) for full, c in zip(mask.shape, crop_hw)]
    if mask.any():
        centre = [float(v.mean()) for v in np.nonzero(mask)]
        for k, (s, c) in enumerate(zip(starts, crop_hw)):
            inside = (s <= centre[k]) & (centre[k] < s + c)
            starts[k] = s[inside] if inside.any() else s
    return int(rng.choice(starts[0])), int(rng.choice(starts[1]))


def _views(good: list[np.ndarray], few_shot: list[FewShot], rng: np.random.Generator, is_defect: bool,
           nuis: NuisanceSpec, scale: float, area_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(view 1, view 2, mask of view 2, views share places) for one sample."""
    image = good[int(rng.integers(len(good)))]
    v1 = nuisance(image, rng, nuis)
    if is_defect and few_shot and rng.random() < 0.5:
        # A real defect has no good twin: its good patches get no positive, its defect is a negative.
        fs = few_shot[int(rng.integers(len(few_shot)))]
        return v1, fs.image, fs.mask, False
    v2 = nuisance(image, rng, nuis)
    if is_defect:
        if area_fraction and rng.random() < area_fraction:
            v2, mask, _ = paint_area_defect(v2, rng)
        else:
            v2, mask = defect_negative(v2, rng, scale, donors=good)
        return v1, v2, mask, True
    return v1, v2, np.zeros(v2.shape[:2], np.uint8), True


def make_metric_batch(good: list[np.ndarray], few_shot: list[FewShot], rng: np.random.Generator, n: int,
                      pre: Preprocess, crop: int, stride: int, defect_fraction: float, scale: float,
                      nuis: NuisanceSpec, image_level: bool, area_fraction: float = 0.0) -> Batch:
    """``n`` pairs of views of good images (already at input size), labelled for the metric losses."""
    crop_h = crop_w = crop
    if not crop:
        crop_h, crop_w = pre.height, pre.width
    crop_h, crop_w = min(crop_h, pre.height), min(crop_w, pre.width)
    gh, gw = crop_h // stride, crop_w // stride
    first, second, lab1, lab2, neg2 = [], [], [], [], []
    is_defect = rng.permutation(np.arange(n) < round(n * defect_fraction))
    for i in range(n):
        v1, v2, mask, twin = _views(good, few_shot, rng, bool(is_defect[i]), nuis, scale, area_fraction)
        y, x = _crop_origin(mask, (crop_h, crop_w), stride, rng)
        win = (slice(y, y + crop_h), slice(x, x + crop_w))
        first.append(v1[win])
        second.append(v2[win])
        place = i * gh * gw + np.arange(gh * gw)
        if image_level:
            bad = bool(mask[win].any())
            lab1.append([i])
            lab2.append([n + i if bad or not twin else i])
            neg2.append([bad])
            continue
        pl = patch_labels(mask[win], (gh, gw)).reshape(-1)
        lab1.append(place)
        own = n * gh * gw + place  # ids no view-1 patch has
        lab2.append(np.where(pl == 1, own, np.where(pl == IGNORE, IGNORE, place if twin else own)))
        neg2.append(pl == 1)
    labels = np.concatenate(lab1 + lab2).astype(np.int64)
    per = len(lab1[0])
    images = np.tile(np.repeat(np.arange(n), per), 2)
    images[labels == IGNORE] = IGNORE
    negatives = np.concatenate([np.zeros(n * per, bool), np.concatenate(neg2).astype(bool)])
    return Batch(normalize(first + second, pre), labels, images, negatives, int(is_defect.sum()))
