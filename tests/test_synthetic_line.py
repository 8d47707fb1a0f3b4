"""The synthetic production line and the defect painters: deterministic, MVTec layout, exact masks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from training.defects import DEFECT_KINDS, paint_defect, paint_random_defect
from training.synthetic_line import LineSpec, generate_line, render_part

SMALL = LineSpec(seed=3, size=128, n_train=4, n_test_good=2, n_test_per_defect=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A stand-in for a real photo: light gradient, machining stripes, a few edges, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = 90 + 60 * xx / w + 12 * np.sin(yy / 3.0) + 40 * ((xx // 40 + yy // 40) % 2) + rng.normal(0, 4, (h, w))
    rgb = np.stack([grey * 1.05, grey, grey * 0.85], -1)  # a colour photo of brass-ish metal
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_line(tmp_path_factory.mktemp("line"), SMALL)


def test_generation_is_byte_identical(line: Path, tmp_path: Path) -> None:
    again = generate_line(tmp_path / "again", SMALL)
    assert _files(line) == _files(again)


def test_each_image_has_its_own_seed(line: Path, tmp_path: Path) -> None:
    # Asking for more training images must not change the test set a report was made on.
    bigger = generate_line(tmp_path / "bigger", LineSpec(**{**SMALL.__dict__, "n_train": 6}))
    assert (bigger / "test/good/000.png").read_bytes() == (line / "test/good/000.png").read_bytes()
    assert (bigger / "test/crack/001.png").read_bytes() == (line / "test/crack/001.png").read_bytes()


def test_layout_is_mvtec(line: Path) -> None:
    assert len(list((line / "train/good").glob("*.png"))) == SMALL.n_train
    assert len(list((line / "test/good").glob("*.png"))) == SMALL.n_test_good
    assert sorted(p.name for p in (line / "test").iterdir()) == sorted(("good", *DEFECT_KINDS))
    assert "n_train = 4" in (line / "README.txt").read_text()
    for kind in DEFECT_KINDS:
        images = sorted((line / "test" / kind).glob("*.png"))
        assert len(images) == SMALL.n_test_per_defect
        assert len(list((line / "ground_truth" / kind).iterdir())) == len(images)
        for path in images:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(line / "ground_truth" / kind / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
            assert image.shape == (SMALL.size, SMALL.size, 3)
            assert mask is not None and mask.shape == image.shape[:2], path
            assert set(np.unique(mask)) == {0, 255}, path


def test_defects_lie_on_the_part(line: Path) -> None:
    # The belt is dark (about 50); the steel is much brighter. A defect's mask should mostly cover
    # steel, judged on the matching good render: the median under the mask is not belt.
    for kind in ("scratch", "spot", "crack", "contamination"):
        for path in sorted((line / "ground_truth" / kind).glob("*.png")):
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
            h, w = mask.shape
            yy, xx = np.nonzero(mask)
            r = np.hypot(xx - w / 2, yy - h / 2)
            assert np.median(r) < 0.42 * w, path  # inside the flange's outer radius


def test_refuses_to_clear_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not ours")
    with pytest.raises(KenpinError, match="no synthetic line"):
        generate_line(tmp_path, SMALL)
    assert (tmp_path / "precious.txt").exists()


def test_regenerating_replaces_an_earlier_line(tmp_path: Path) -> None:
    generate_line(tmp_path, SMALL)
    generate_line(tmp_path, LineSpec(**{**SMALL.__dict__, "n_train": 2}))
    assert len(list((tmp_path / "train/good").glob("*.png"))) == 2


def test_good_parts_vary_but_are_the_same_part() -> None:
    a = render_part(np.random.default_rng(1), 256).astype(np.float32)
    b = render_part(np.random.default_rng(2), 256).astype(np.float32)
    assert a.shape == (256, 256, 3)
    assert 2 < np.abs(a - b).mean() < 40  # nuisance variation, not a different scene


@pytest.mark.parametrize("shape", [(256, 256), (460, 1130)])
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_paint_defect_changes_only_the_masked_pixels(kind: str, shape: tuple[int, int]) -> None:
    image = _textured(*shape)
    before = image.copy()
    out, mask = paint_defect(image, kind, np.random.default_rng(7))
    assert np.array_equal(image, before), "the input image must not be modified"
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    inside = mask > 0
    assert 0.0005 < inside.mean() < 0.05, f"{kind}: {inside.mean():.4f} of the image"
    changed = np.abs(out.astype(np.int16) - image).max(-1) > 0
    assert not (changed & ~inside).any(), "pixels outside the mask changed"
    assert np.abs(out.astype(np.int16) - image)[inside].mean() > 5, "defect too faint to see"


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_paint_defect_is_deterministic_and_respects_region(kind: str) -> None:
    image = _textured(200, 300, seed=1)
    region = np.zeros((200, 300), bool)
    region[40:160, 60:240] = True
    a, mask_a = paint_defect(image, kind, np.random.default_rng(5), region=region)
    b, mask_b = paint_defect(image, kind, np.random.default_rng(5), region=region)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    near = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # soft edges spill a px
    assert mask_a.any() and not (mask_a.astype(bool) & ~near).any()


def test_paint_random_defect_names_its_kind() -> None:
    kinds = {paint_random_defect(_textured(64, 64), np.random.default_rng(i))[2] for i in range(40)}
    assert kinds == set(DEFECT_KINDS)


def test_paint_defect_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown defect kind"):
        paint_defect(_textured(64, 64), "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 64x64"):
        paint_defect(_textured(32, 32), "spot", np.random.default_rng(0))
