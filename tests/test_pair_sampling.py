"""Nuisance views, defect negatives, patch labels and few-shot defects, on small generated images."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from training.metric.pair_sampling import (
    IGNORE,
    NuisanceSpec,
    defect_negative,
    labeled_defects,
    make_batch,
    nuisance,
    paint_cut_paste,
    paint_noise_texture,
    patch_labels,
)


def _good(seed: int, size: int = 96, grey: bool = False) -> np.ndarray:
    """A smooth part-like image: a lit gradient, a ring, a little grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    r = np.hypot(xx - 0.5, yy - 0.5)
    base = 90 + 80 * xx + 40 * yy + 50 * (np.abs(r - 0.3) < 0.06) + rng.normal(0, 2, (size, size))
    tint = np.array([1.0, 1.0, 1.0]) if grey else np.array([0.95, 1.0, 1.05])
    return np.clip(base[..., None] * tint, 0, 255).astype(np.uint8)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=-1)


def test_nuisance_is_deterministic_given_the_seed():
    img = _good(0)
    a = nuisance(img, np.random.default_rng(5))
    assert np.array_equal(a, nuisance(img, np.random.default_rng(5)))
    assert not np.array_equal(a, nuisance(img, np.random.default_rng(6)))


def test_nuisance_keeps_shape_and_dtype_and_changes_the_image_only_mildly():
    img = _good(1)
    for seed in range(8):
        out = nuisance(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(np.int16) - img).mean()
        assert 0 < diff < 20, diff  # a second look at the same part, not a different part


def test_nuisance_noise_on_a_mono_camera_stays_grey():
    out = nuisance(_good(2, grey=True), np.random.default_rng(0), NuisanceSpec(noise_sigma=10.0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_zero_nuisance_is_the_identity():
    spec = NuisanceSpec(0.0, 0.0, 0.0, 0.0, (1.0, 1.0), 0.0, (0.0, 0.0))
    img = _good(3)
    assert np.array_equal(nuisance(img, np.random.default_rng(0), spec), img)


@pytest.mark.parametrize(
    "paint",
    [
        lambda im, rng: paint_cut_paste(im, rng),
        lambda im, rng: paint_cut_paste(im, rng, donor=_good(99, size=128)),  # another size, resized
        lambda im, rng: paint_noise_texture(im, rng),
        *[lambda im, rng, s=s: defect_negative(im, np.random.default_rng(s)) for s in range(12)],
    ],
    ids=["cut_paste", "cut_paste_donor", "noise_texture", *[f"negative{s}" for s in range(12)]],
)
def test_defect_negatives_have_a_mask_and_change_nothing_outside_it(paint):
    img = _good(4)
    out, mask = paint(img, np.random.default_rng(7))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    changed = _changed(out, img)
    assert changed.any()
    near = cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0
    assert not (changed & ~near).any()


def test_defect_negative_is_deterministic_given_the_seed():
    img, donors = _good(5), [_good(6)]
    for seed in range(8):
        a = defect_negative(img, np.random.default_rng(seed), donors=donors)
        b = defect_negative(img, np.random.default_rng(seed), donors=donors)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_patch_labels_on_a_hand_made_mask():
    mask = np.zeros((96, 96), np.uint8)  # 4x4 grid of 24 px patches
    mask[0:24, 0:24] = 255  # patch (0, 0) entirely defect
    mask[24:26, 24:48] = 255  # patch (1, 1): 2 of 24 rows, 8 %: a sliver → ignore
    mask[48:72, 84:96] = 255  # patch (2, 3): half of it → defect
    mask[90:96, 0:24] = 255  # patch (3, 0): exactly 25 % → defect (≥ min_fraction)
    want = np.array([[1, 0, 0, 0], [0, IGNORE, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    got = patch_labels(mask, (4, 4), min_fraction=0.25)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    stricter = np.array([[1, 0, 0, 0], [0, IGNORE, 0, 0], [0, 0, 0, IGNORE], [IGNORE, 0, 0, 0]])
    assert np.array_equal(patch_labels(mask, (4, 4), min_fraction=0.6), stricter)
    assert not patch_labels(np.zeros((50, 70), np.uint8), (7, 9)).any()  # sizes not a multiple of the grid


def test_make_batch_mixes_good_views_and_negatives():
    goods = [_good(s) for s in range(3)]
    batch = make_batch(goods, np.random.default_rng(0), 6, defect_fraction=0.5)
    assert len(batch) == 6
    n_bad = sum(bool(m.any()) for _, m in batch)
    assert n_bad == 3
    for image, mask in batch:
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96) and mask.dtype == np.uint8
    again = make_batch(goods, np.random.default_rng(0), 6, defect_fraction=0.5)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batch, again))


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def test_labeled_defects_reads_train_defects_and_their_masks_but_never_test(tmp_path):
    img = _good(8)
    mask = np.zeros((96, 96), np.uint8)
    mask[10:30, 40:60] = 255
    _write(tmp_path / "train/good/000.png", img)
    _write(tmp_path / "train/scratch/001.png", img)
    _write(tmp_path / "ground_truth/scratch/001_mask.png", mask)
    _write(tmp_path / "train/dent/002.png", img)  # a defect without a mask
    _write(tmp_path / "ground_truth/scratch/003_mask.png", mask)
    (tmp_path / "test/scratch").mkdir(parents=True)
    (tmp_path / "test/scratch/003.png").write_bytes(b"not an image: reading it would raise")

    found = labeled_defects(tmp_path)
    assert [(d.path.relative_to(tmp_path).as_posix(), d.defect) for d in found] == [
        ("train/dent/002.png", "dent"), ("train/scratch/001.png", "scratch")]
    dent, scratch = found
    assert dent.mask is None and dent.image.shape == (96, 96, 3)
    assert scratch.mask is not None and np.array_equal(scratch.mask, mask)
    assert labeled_defects(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_shift_fraction", -0.1), ("max_shift_fraction", 0.5), ("max_rotation_deg", 90.0), ("brightness", 1.5),
     ("contrast", -1.0), ("noise_sigma", 500.0), ("gamma", (1.2, 0.8)), ("gamma", (0.0, 1.0)),
     ("blur_sigma", (1.0,)), ("blur_sigma", (-1.0, 1.0)), ("max_rotation_deg", "3")],
)
def test_bad_nuisance_spec_names_the_field(field, value):
    with pytest.raises(KenpinError, match=rf"nuisance\.{field} "):
        NuisanceSpec(**{field: value})


def test_nuisance_spec_takes_yaml_lists():
    spec = NuisanceSpec(gamma=[0.8, 1.2])
    assert spec.gamma == (0.8, 1.2) and hash(spec)


def _few_shot_folder(tmp_path: Path) -> Path:
    _write(tmp_path / "train/good/000.png", _good(8))
    _write(tmp_path / "train/scratch/001.png", _good(8))
    _write(tmp_path / "test/scratch/002.png", _good(8))
    return tmp_path


def test_a_mask_of_another_size_is_named_with_both_sizes(tmp_path):
    root = _few_shot_folder(tmp_path)
    _write(root / "ground_truth/scratch/001_mask.png", np.zeros((48, 64), np.uint8))
    with pytest.raises(KenpinError, match=r"001_mask.png: 64x48 px, but its image .*001.png is 96x96"):
        labeled_defects(root)


def test_a_mask_that_names_no_image_is_refused(tmp_path):
    root = _few_shot_folder(tmp_path)
    _write(root / "ground_truth/scratch/0001_mask.png", np.zeros((96, 96), np.uint8))  # a typo
    with pytest.raises(KenpinError, match="0001_mask.png: names no image of train/scratch/ or test/scratch/"):
        labeled_defects(root)


def test_an_empty_defect_folder_is_refused(tmp_path):
    root = _few_shot_folder(tmp_path)
    (root / "train/dent").mkdir()
    with pytest.raises(KenpinError, match="train/dent: no images"):
        labeled_defects(root)


def test_a_type_only_in_train_is_used_and_said_once(tmp_path, caplog):
    root = _few_shot_folder(tmp_path)
    _write(root / "train/dent/003.png", _good(8))
    with caplog.at_level(logging.WARNING):
        found = labeled_defects(root)
    assert {d.defect for d in found} == {"scratch", "dent"}
    said = [r.getMessage() for r in caplog.records if "not in test/" in r.getMessage()]
    assert len(said) == 1 and "dent" in said[0] and "scratch" not in said[0]
