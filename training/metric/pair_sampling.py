"""Where metric learning's anchors, positives and negatives come from.

- Positives: good images under a nuisance a fixed line camera really sees (a few px of shift, a
  few degrees of rotation, light level, focus, sensor noise): the embedding must ignore these.
- Negatives: defects painted onto good images (``training.defects``), plus two painters of our
  own: CutPaste (Li et al. 2021) and a Perlin-like noise blob filled with a foreign texture
  (as in DRAEM, Zavrtanik et al. 2021). Every painter returns an exact mask.
- Few-shot: real defective images a user may have put in ``train/<defect>/``.

``patch_labels`` turns a pixel mask into labels on the embedder's patch grid, which is what the
losses in ``training.metric.losses`` consume. Nothing here reads ``test/``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from device.errors import KenpinError
from device.images import list_images, read_rgb
from training.dataset import mask_for
from training.defects import DEFECT_KINDS, composite, paint_random_defect

log = logging.getLogger(__name__)

IGNORE = -1  # patch label: partly defective, so neither a clean positive nor a clean negative
# Negative kinds drawn uniformly by defect_negative: the six of defects.py and our two.
NEGATIVE_KINDS: tuple[str, ...] = (*DEFECT_KINDS, "cut_paste", "noise_texture")


@dataclass(frozen=True)
class NuisanceSpec:
    """How far a good image may vary and still be good; defaults suit a fixed camera on a line.

    Each value is the largest change drawn (uniformly) per image; ranges are (low, high).
    """

    max_shift_fraction: float = 0.02  # of the shorter side: 5 px at 256 px (part placement)
    max_rotation_deg: float = 3.0  # part lying slightly askew on the belt
    brightness: float = 0.10  # gain in [1 - b, 1 + b]: lamp ageing, exposure
    contrast: float = 0.10  # spread around the mean scaled by [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.9, 1.1)  # tone curve: camera/ISP settings
    noise_sigma: float = 3.0  # sensor noise std (0-255 levels) is drawn in [0, noise_sigma]
    blur_sigma: tuple[float, float] = (0.0, 0.8)  # px: focus drift, slight motion

    def __post_init__(self) -> None:
        limits = {"max_shift_fraction": 0.25, "max_rotation_deg": 45.0, "brightness": 0.9,
                  "contrast": 0.9, "noise_sigma": 50.0}
        for name, top in limits.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= top:
                raise KenpinError(f"nuisance.{name} = {value!r}: use a number in 0–{top:g}")
        for name, low, top in (("gamma", 0.2, 5.0), ("blur_sigma", 0.0, 5.0)):
            value = getattr(self, name)
            ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if not ok or not low <= value[0] <= value[1] <= top:
                raise KenpinError(
                    f"nuisance.{name} = {value!r}: use [low, high] with {low:g} ≤ low ≤ high ≤ {top:g}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))  # YAML gives lists


def _check_image(image: np.ndarray, who: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{who} needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")


def nuisance(image: np.ndarray, rng: np.random.Generator, spec: NuisanceSpec = NuisanceSpec()) -> np.ndarray:
    """A copy of ``image`` (HxWx3 uint8 RGB) as the camera might have seen the same part again.

    In the camera's order: placement (shift, rotation), focus blur, exposure gain, sensor noise,
    then the tone curve (gamma, contrast). Deterministic given ``rng``; same shape and dtype.
    """
    _check_image(image, "nuisance")
    h, w = image.shape[:2]
    # Draw every number up front, in a fixed order, so the result depends on rng alone.
    shift = rng.uniform(-1, 1, 2) * spec.max_shift_fraction * min(h, w)
    angle = rng.uniform(-1, 1) * spec.max_rotation_deg
    blur = rng.uniform(*spec.blur_sigma)
    gain = 1 + rng.uniform(-1, 1) * spec.brightness
    sigma = rng.uniform(0, spec.noise_sigma)
    gamma = rng.uniform(*spec.gamma)
    contrast = 1 + rng.uniform(-1, 1) * spec.contrast

    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    m[:, 2] += shift
    # Reflecting the border invents no black wedge, which would itself look like a defect.
    img = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    x = img.astype(np.float32)
    if blur >= 0.3:  # below that the kernel is one pixel wide anyway
        x = cv2.GaussianBlur(x, (0, 0), blur)
    x *= gain
    # A mono camera's frame is grey in all three channels: its noise must be too.
    grey = np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    x += rng.standard_normal((h, w, 1) if grey else (h, w, 3), dtype=np.float32) * np.float32(sigma)
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma
    x = (x - x.mean()) * contrast + x.mean()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---- defect negatives -----------------------------------------------------------------------


def paint_cut_paste(image: np.ndarray, rng: np.random.Generator, scale: float = 1.0,
                    donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: a rectangle of ``donor`` (default: the image itself), maybe flipped and rotated,
    pasted elsewhere. Returns (image, mask HxW uint8 0/255 where the paste lies)."""
    _check_image(image, "paint_cut_paste")
    h, w = image.shape[:2]
    src = image if donor is None else cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA)
    area = min(0.25, rng.uniform(0.01, 0.05) * scale) * h * w  # a defect, not half the part
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    ph = int(np.clip(round(math.sqrt(area * aspect)), 4, h // 2))
    pw = int(np.clip(round(math.sqrt(area / aspect)), 4, w // 2))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = src[y0:y0 + ph, x0:x0 + pw]
    if rng.random() < 0.5:
        patch = patch[:, ::-1] if rng.random() < 0.5 else patch[::-1]
    angle = rng.uniform(-45, 45) if rng.random() < 0.5 else 0.0
    # Land at least half a patch away from where it came from: on aligned parts, the same spot of
    # the image itself or of another good part would look right, and so be no defect.
    for _ in range(20):
        cx, cy = rng.uniform(pw / 2, w - pw / 2), rng.uniform(ph / 2, h - ph / 2)
        if max(abs(cx - x0 - pw / 2) / pw, abs(cy - y0 - ph / 2) / ph) >= 0.5:
            break
    m = cv2.getRotationMatrix2D(((pw - 1) / 2, (ph - 1) / 2), angle, 1.0)
    m[:, 2] += (cx - pw / 2, cy - ph / 2)
    target = cv2.warpAffine(np.ascontiguousarray(patch), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    alpha = cv2.warpAffine(np.ones((ph, pw), np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return composite(image, alpha, target)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Perlin-like fractal noise (HxW float32): octaves of cubic-upsampled random grids, 1/2 weight each."""
    out = np.zeros((h, w), np.float32)
    for o in range(octaves):
        c = cells * 2 ** o
        grid = rng.standard_normal((c + 1, c + 1)).astype(np.float32)
        out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 2 ** o
    return out


def _foreign_texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A texture that does not belong (HxWx3 float32): the image turned and re-toned, or coloured noise."""
    h, w = image.shape[:2]
    if rng.random() < 0.5:  # with no texture library at hand, the image's own content, displaced
        turned = np.rot90(image, int(rng.integers(1, 4)))
        tex = cv2.resize(np.ascontiguousarray(turned), (w, h)).astype(np.float32)
        tex = 255.0 - tex if rng.random() < 0.5 else tex * rng.uniform(0.4, 1.6)
    else:  # a foreign material: a colour of its own with grain at a scale of its own
        colour = rng.uniform(20, 235, 3).astype(np.float32)
        grain = _smooth_noise(rng, h, w, int(rng.integers(8, 24)), octaves=2)
        tex = colour + rng.uniform(10, 50) * (grain / max(1e-6, float(grain.std())))[..., None]
    return np.clip(tex, 0, 255)


def paint_noise_texture(image: np.ndarray, rng: np.random.Generator,
                        scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Perlin-like noise thresholded into blobs, filled with a foreign texture (DRAEM-style).

    Returns (image, mask HxW uint8 0/255). Blobs cover roughly 1-5 % of the image times ``scale``.
    """
    _check_image(image, "paint_noise_texture")
    h, w = image.shape[:2]
    noise = _smooth_noise(rng, h, w, int(rng.integers(2, 6)))
    frac = min(0.3, rng.uniform(0.01, 0.05) * scale)
    blob = (noise >= np.quantile(noise, 1 - frac)).astype(np.float32)
    alpha = cv2.GaussianBlur(blob, (0, 0), max(0.5, min(h, w) / 256)) * rng.uniform(0.5, 0.95)
    return composite(image, alpha, _foreign_texture(image, rng))


def defect_negative(image: np.ndarray, rng: np.random.Generator, scale: float = 1.0,
                    donors: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A defect of a kind drawn uniformly from NEGATIVE_KINDS on a copy of ``image``: (image, mask 0/255).

    ``donors`` are other good images CutPaste may cut from (else it cuts from the image itself).
    """
    kind = NEGATIVE_KINDS[int(rng.integers(len(NEGATIVE_KINDS)))]
    if kind == "cut_paste":
        donor = donors[int(rng.integers(len(donors)))] if len(donors) and rng.random() < 0.5 else None
        return paint_cut_paste(image, rng, scale, donor)
    if kind == "noise_texture":
        return paint_noise_texture(image, rng, scale)
    out, mask, _ = paint_random_defect(image, rng, scale)
    return out, mask


# ---- labels, batches, few-shot --------------------------------------------------------------


def patch_labels(mask: np.ndarray, grid_hw: tuple[int, int], min_fraction: float = 0.25) -> np.ndarray:
    """Per-patch labels (gh x gw int64) of a pixel mask (HxW, non-zero = defect).

    1 where at least ``min_fraction`` of a patch's pixels are defect, IGNORE (-1) where some but
    fewer are (a sliver of defect makes a patch neither clean good nor clearly bad), 0 elsewhere.
    """
    gh, gw = grid_hw
    if mask.ndim != 2 or not 1 <= gh <= mask.shape[0] or not 1 <= gw <= mask.shape[1]:
        raise ValueError(f"patch_labels needs an HxW mask at least as large as the grid; got {mask.shape}, {grid_hw}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction = {min_fraction}: use (0, 1]")
    # INTER_AREA averages each patch's pixels (with fractional weights where H or W is not a
    # multiple of the grid); an all-clean patch averages to exactly 0.
    frac = cv2.resize((mask > 0).astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    labels = np.where(frac > 0, IGNORE, 0)
    labels[frac >= min_fraction - 1e-6] = 1
    return labels.astype(np.int64)


def make_batch(good_images: Sequence[np.ndarray], rng: np.random.Generator, n: int,
               spec: NuisanceSpec = NuisanceSpec(), defect_fraction: float = 0.5,
               scale: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image, mask) pairs in random order: round(n·defect_fraction) defect negatives, the rest good.

    Every image is a random good image under a fresh nuisance; a negative is then painted on it,
    so nuisance never tells the two apart. Good images get an all-zero mask.
    """
    if not len(good_images) or n < 1 or not 0 <= defect_fraction <= 1:
        raise ValueError(f"make_batch needs good images, n >= 1 and defect_fraction in [0, 1]; "
                         f"got {len(good_images)} images, n={n}, defect_fraction={defect_fraction}")
    bad = np.zeros(n, bool)
    bad[: round(n * defect_fraction)] = True
    batch = []
    for is_bad in rng.permutation(bad):
        img = nuisance(good_images[int(rng.integers(len(good_images)))], rng, spec)
        if is_bad:
            batch.append(defect_negative(img, rng, scale, donors=good_images))
        else:
            batch.append((img, np.zeros(img.shape[:2], np.uint8)))
    return batch


@dataclass(frozen=True)
class LabeledDefect:
    """A real defective training image from ``train/<defect>/``; mask None when none was given."""

    path: Path
    defect: str
    image: np.ndarray
    mask: np.ndarray | None  # HxW uint8 0/255, same size as the image


def labeled_defects(root: str | Path) -> list[LabeledDefect]:
    """The optional few-shot defects of an MVTec-layout folder: ``train/<defect>/`` for every
    folder but ``good``, with ``ground_truth/<defect>/<stem>_mask.png`` where it exists.

    Never looks into ``test/`` (beyond its file names, to tell an orphan mask). MVTec keeps test
    masks in the same ``ground_truth/<defect>/`` folder, so a train and a test image of one defect
    must not share a file name. An empty defect folder, a mask of another size than its image or a
    mask that names no image is an error naming the file; a type absent from ``test/`` is allowed
    and said once.
    """
    root = Path(root)
    train = root / "train"
    found = []
    subs = sorted(p for p in train.iterdir() if p.is_dir() and p.name != "good") if train.is_dir() else []
    for sub in subs:
        images = list_images(sub)
        if not images:
            raise KenpinError(f"{sub}: no images; put the line's rejects of this type there, or remove the folder")
        _check_mask_names(root, sub.name, images)
        found += [LabeledDefect(path, sub.name, *_image_and_mask(root, sub.name, path)) for path in images]
    untested = [s.name for s in subs if not (root / "test" / s.name).is_dir()]
    if untested:
        log.warning("%s: defect type(s) %s are in train/ but not in test/: used for training, not evaluated",
                    root, ", ".join(untested))
    return found


def _image_and_mask(root: Path, defect: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    image = read_rgb(path)
    mask_path = mask_for(root, defect, path)
    if mask_path is None:
        return image, None
    m = read_rgb(mask_path)[..., 0]
    if m.shape != image.shape[:2]:
        raise KenpinError(f"{mask_path}: {m.shape[1]}x{m.shape[0]} px, but its image {path} is "
                          f"{image.shape[1]}x{image.shape[0]}; a mask must be the size of its image")
    return image, np.where(m > 127, 255, 0).astype(np.uint8)  # same cut as evaluate's masks


def _check_mask_names(root: Path, defect: str, train_images: list[Path]) -> None:
    """Every ``ground_truth/<defect>/`` mask must name an image of train/ or test/ of that type."""
    stems = {p.stem for p in train_images} | {p.stem for p in list_images(root / "test" / defect)}
    for mask in list_images(root / "ground_truth" / defect):
        if not mask.stem.endswith("_mask") or mask.stem[: -len("_mask")] not in stems:
            raise KenpinError(f"{mask}: names no image of train/{defect}/ or test/{defect}/ "
                              f"(a mask is named <image stem>_mask.png)")
