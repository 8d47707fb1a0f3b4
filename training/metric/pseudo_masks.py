"""Masks for real defects that came without one: a multiple-instance guess from the frozen model.

A rejected part an operator marked (dashboard feedback) has no mask: only "somewhere in this
image is a defect". The multiple-instance reading of that label is that at least one patch must
land far from every good patch. The patches the frozen embedder already finds the least like the
good bank are the best guess of where: the image's peak patch, and the patches around it that
score nearly as high. Those become the defect rows of the metric losses, like a drawn mask's.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from device.scoring import NearestNeighbourScorer
from training.coreset import greedy_coreset
from training.fit import flatten_patches

PEAK_SHARE = 0.85  # patches within this share of the image's peak distance join it
MAX_PATCHES = 6  # a guess, not a drawn outline: keep it to the peak's neighbourhood
BANK_ROWS = 4000


def guess_masks(embed: Callable[[np.ndarray], np.ndarray], good: np.ndarray, defects: np.ndarray,
                input_hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Pixel masks (HxW uint8 0/255 at input size) for ``defects`` (Nx3xHxW model inputs), from their
    nearest-neighbour distances to ``good`` (model inputs of good images)."""
    patches = flatten_patches(embed(good))
    bank = patches[greedy_coreset(patches, min(BANK_ROWS, len(patches)), 128, seed)]
    scorer = NearestNeighbourScorer(bank)
    masks = []
    for m in embed(defects):
        c, gh, gw = m.shape
        d = scorer.distances(np.ascontiguousarray(m.reshape(c, -1).T)).reshape(gh, gw)
        masks.append(_peak_mask(d, input_hw))
    return masks


def _peak_mask(distances: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The peak patch and up to MAX_PATCHES - 1 more within PEAK_SHARE of it, as a pixel mask."""
    gh, gw = distances.shape
    flat = distances.reshape(-1)
    order = np.argsort(flat)[::-1][:MAX_PATCHES]
    keep = order[flat[order] >= PEAK_SHARE * flat[order[0]]]
    grid = np.zeros(gh * gw, np.uint8)
    grid[keep] = 255
    h, w = input_hw
    # Each patch covers its own block of pixels: repeat, then pad to the input's size.
    mask = np.repeat(np.repeat(grid.reshape(gh, gw), h // gh, axis=0), w // gw, axis=1)
    return np.pad(mask, ((0, h - mask.shape[0]), (0, w - mask.shape[1])))
