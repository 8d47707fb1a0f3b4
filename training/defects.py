"""Synthetic defect painters: plausible defects with exact masks, painted onto good images.

Used to build the demo's procedural production line and to paint synthetic negatives onto real
good images, so a model can be validated without touching the real test defects.

Every painter works on any HxWx3 uint8 RGB image of at least 64x64 px:

- sizes scale with min(H, W) (the reference is 256 px) and with ``scale``;
- contrast is relative to the local image (a shade darker or lighter, not a fixed colour), and
  darkening/lightening is multiplicative so the surface texture still shows through;
- edges are anti-aliased (OpenCV ``LINE_AA`` with sub-pixel coordinates, Gaussian blur);
- the mask is exact: a pixel is 255 in the mask iff the painter touched it (its opacity is > 0),
  so nothing outside the mask changes.

``region`` (optional, HxW bool) keeps a defect on the object: centres are drawn inside it, the
paint is clipped to it, and a chip bites into its outer edge.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack", "chip", "contamination", "missing_feature")

_SHIFT = 4  # fractional bits for cv2 drawing: coordinates are passed as ints * 16 (sub-pixel)
_FLOOR = 0.05  # opacities below this are dropped, so a soft edge does not spread a faint halo
# Foreign matter (RGB): dark hair, black fibre, white lint, blue fibre, rust, grease.
_CONTAMINANTS = np.array(
    [[60, 40, 28], [22, 22, 24], [225, 220, 205], [45, 80, 170], [150, 75, 35], [70, 62, 40]], np.float32
)

Painter = Callable[[np.ndarray, np.random.Generator, float, "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]


def paint_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, scale: float = 1.0, *, region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` onto a copy of ``image``.

    image: HxWx3 uint8 RGB, not modified. scale multiplies the defect size (1.0 covers roughly
    0.2-3 % of the image). region: optional HxW bool mask of the object the defect must lie on.
    Returns (defective image HxWx3 uint8, mask HxW uint8: 255 where the defect is, 0 elsewhere).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"paint_defect needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 64:
        raise ValueError(f"paint_defect needs an image of at least 64x64 px, got {image.shape[1]}x{image.shape[0]}")
    if kind not in _PAINTERS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECT_KINDS)}")
    if region is not None:
        region = np.asarray(region).astype(bool)
        if region.shape != image.shape[:2] or not region.any():
            raise ValueError(f"region must be a non-empty HxW mask of shape {image.shape[:2]}, got {region.shape}")
    return _PAINTERS[kind](image, rng, float(scale), region)


def paint_random_defect(
    image: np.ndarray, rng: np.random.Generator, scale: float = 1.0, *, region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Paint a defect of a kind drawn uniformly from DEFECT_KINDS; returns (image, mask, kind)."""
    kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    return (*paint_defect(image, kind, rng, scale, region=region), kind)


# ---- shared helpers -------------------------------------------------------------------------


def _unit(image: np.ndarray) -> float:
    """Length unit: 1 px on a 256 px image, so widths and sizes follow the image size."""
    return min(image.shape[:2]) / 256.0


def _blob_radius(image: np.ndarray, rng: np.random.Generator, scale: float, lo: float, hi: float) -> float:
    """Radius of a blob covering a log-uniform fraction in [lo, hi] of the image area."""
    frac = np.exp(rng.uniform(np.log(lo), np.log(hi)))
    return max(1.5, float(np.sqrt(frac * image.shape[0] * image.shape[1] / np.pi)) * scale)


def _centre(image: np.ndarray, rng: np.random.Generator, margin: float, region: np.ndarray | None) -> np.ndarray:
    """A random point (x, y): inside ``region`` if given, else at least ``margin`` px from the border."""
    h, w = image.shape[:2]
    if region is not None:
        ys, xs = np.nonzero(region)
        i = int(rng.integers(len(xs)))
        return np.array([xs[i], ys[i]], np.float64) + rng.uniform(-0.5, 0.5, 2)
    m = min(margin, h / 2 - 1, w / 2 - 1)
    return np.array([rng.uniform(m, w - m), rng.uniform(m, h - m)])


def _draw_path(shape: tuple[int, int], points: np.ndarray, thickness: int) -> np.ndarray:
    """Opacity (float32 0..1) of an anti-aliased polyline through ``points`` (Nx2, x/y px)."""
    canvas = np.zeros(shape, np.uint8)
    pts = np.round(points * (1 << _SHIFT)).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 255, int(thickness), cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _draw_blob(shape: tuple[int, int], centre: np.ndarray, radius: float, rng: np.random.Generator,
               roughness: float = 0.25) -> np.ndarray:
    """Opacity of an irregular filled blob: an ellipse whose radius wobbles with low harmonics."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    wobble = sum(rng.normal(0, roughness / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    r = radius * np.clip(1 + wobble, 0.4, 1.8)
    stretch, tilt = rng.uniform(0.7, 1.4), rng.uniform(0, np.pi)  # most blobs are a bit oblong
    x, y = r * np.cos(t) * stretch, r * np.sin(t) / stretch
    pts = np.stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)], 1) + centre
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float,
          jitter: float) -> np.ndarray:
    """Points of a random walk whose heading wanders around ``heading`` (AR(1), so it never curls up)."""
    n = max(2, int(length / step))
    dev = np.zeros(n)
    for i in range(1, n):
        dev[i] = 0.75 * dev[i - 1] + rng.normal(0, jitter)
    ang = heading + dev
    steps = np.stack([np.cos(ang), np.sin(ang)], 1) * step
    return start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, 0)])


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an opacity map (skipped for tiny sigma)."""
    return cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma >= 0.3 else alpha


def _level(image: np.ndarray, centre: np.ndarray, radius: float) -> float:
    """Mean brightness (0..255) around ``centre``: defect contrast is taken relative to it."""
    h, w = image.shape[:2]
    r = int(max(4, radius))
    x, y = int(np.clip(centre[0], 0, w - 1)), int(np.clip(centre[1], 0, h - 1))
    return float(image[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1].mean())


def _shade(image: np.ndarray, level: float, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A darker or lighter copy of the image (texture kept), and whether it is the darker one."""
    img = image.astype(np.float32)
    # Bright surfaces show defects dark, dark ones bright; in between either can happen.
    dark = level > 170 or (level >= 70 and rng.random() < 0.5)
    if dark:
        return img * rng.uniform(0.3, 0.55), True
    return 255.0 - (255.0 - img) * rng.uniform(0.4, 0.65), False


def _grain(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Std of the image's fine grain (sensor noise, texture), robust to edges: a median, not a mean."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0))
    return 1.4826 * float(np.median(detail if where is None else detail[where]))


def _matched_colour(image: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as is on a colour image, as its grey level on a grey one (a mono camera sees no hue)."""
    sample = image[::7, ::7].astype(np.int16)
    if np.abs(sample - sample[..., :1]).max() <= 3:
        return np.full(3, rgb @ np.array([0.299, 0.587, 0.114], np.float32), np.float32)
    return rgb.astype(np.float32)


def _clip_to(alpha: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Keep paint on the object: multiply by a slightly softened region mask."""
    return alpha if region is None else alpha * _blur(region.astype(np.float32), 0.7)


def composite(image: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``target`` over ``image`` with opacity ``alpha``; the mask is where the opacity is > 0."""
    # Re-map so opacities under _FLOOR become exactly 0: the edge stays soft, but nothing outside
    # the mask changes at all, which keeps the mask exact.
    a = np.clip((alpha - _FLOOR) / (1 - _FLOOR), 0, 1)
    out = image.astype(np.float32) * (1 - a[..., None]) + target * a[..., None]
    mask = np.where(a > 0, 255, 0).astype(np.uint8)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


# ---- the painters ---------------------------------------------------------------------------


def _scratch(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """A thin, slightly curved line, bright or dark, fading in and out where the tool touched."""
    h, w = image.shape[:2]
    length = min(h, w) * rng.uniform(0.25, 0.55) * scale
    c = _centre(image, rng, length / 2, region)
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    p0, p2 = c - d * length / 2, c + d * length / 2
    ctrl = c + np.array([-d[1], d[0]]) * rng.normal(0, 0.1) * length  # a gentle bow, as from a hand
    t = np.linspace(0, 1, 64)[:, None]
    alpha = _draw_path((h, w), (1 - t) ** 2 * p0 + 2 * t * (1 - t) * ctrl + t ** 2 * p2,
                       max(1, round(_unit(image) * scale * rng.uniform(0.8, 2.4))))
    # Fade along the length: position of each pixel projected on the p0 -> p2 axis.
    yy, xx = np.ogrid[:h, :w]
    along = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / length, 0, 1)
    alpha *= (np.sin(np.pi * along) ** 0.4 * rng.uniform(0.6, 0.95)).astype(np.float32)
    target, _ = _shade(image, _level(image, c, length / 2), rng)
    return composite(image, _clip_to(alpha, region), target)


def _spot(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """A pit or stain: a dark or bright blob with a soft edge; stains on colour images get a tint."""
    radius = _blob_radius(image, rng, scale, 0.002, 0.015)
    c = _centre(image, rng, radius, region)
    # The soft edge: stains fade into the surface, pits end more sharply.
    alpha = _blur(_draw_blob(image.shape[:2], c, radius, rng), radius * rng.uniform(0.08, 0.35))
    alpha *= rng.uniform(0.75, 1.0)
    target, dark = _shade(image, _level(image, c, radius), rng)
    if dark and rng.random() < 0.4:  # a rust or water stain is brownish rather than a pure shade
        target = target * (_matched_colour(image, np.array([1.1, 0.92, 0.72], np.float32)) / 0.95)
    return composite(image, _clip_to(alpha, region), np.clip(target, 0, 255))


def _crack(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """A dark, jagged fissure that wanders and forks: a random walk with a few branches."""
    u = _unit(image) * scale
    length = min(image.shape[:2]) * rng.uniform(0.18, 0.35) * scale
    heading = rng.uniform(0, 2 * np.pi)
    c = _centre(image, rng, length / 2, region)
    main = _walk(rng, c - length / 2 * np.array([np.cos(heading), np.sin(heading)]), heading, length,
                 max(1.5, 2.5 * u), 0.3)
    width = max(1, round(1.4 * u))
    alpha = _draw_path(image.shape[:2], main, width)
    for _ in range(int(rng.integers(1, 4))):  # forks leave the main line at a steep angle
        start = main[int(rng.integers(len(main) // 5, len(main)))]
        branch = _walk(rng, start, heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1),
                       length * rng.uniform(0.15, 0.45), max(1.5, 2.5 * u), 0.3)
        alpha = np.maximum(alpha, _draw_path(image.shape[:2], branch, max(1, width - 1)))
    alpha = _blur(alpha, 0.5 * u) * rng.uniform(0.8, 1.0)
    target = image.astype(np.float32) * rng.uniform(0.15, 0.35)  # a fissure is in shadow: always dark
    return composite(image, _clip_to(alpha, region), target)


def _chip(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """Material broken off the object's outer edge (the image border without a region)."""
    h, w = image.shape[:2]
    body = np.ones((h, w), bool) if region is None else region
    contours, _ = cv2.findContours(body.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    edge = max(contours, key=len).reshape(-1, 2).astype(np.float64)
    p = edge[int(rng.integers(len(edge)))]
    radius = _blob_radius(image, rng, scale, 0.004, 0.025)
    outward = p - edge.mean(0)
    outward /= max(1e-6, float(np.linalg.norm(outward)))
    # Centre the bite a little outside the edge so it is shallower than a half disc.
    bite = _draw_blob((h, w), p + outward * radius * rng.uniform(0.0, 0.4), radius, rng, roughness=0.4)
    bite *= body
    # What shows through is the background next to the object, or else the image's darkest tone.
    ring = cv2.dilate(body.astype(np.uint8), np.ones((9, 9), np.uint8), iterations=max(1, round(_unit(image)))) > 0
    ring &= ~body
    if ring.any():
        fill, grain = np.median(image[ring], 0), _grain(image, ring)
    else:
        fill, grain = np.percentile(image.reshape(-1, 3), 2, axis=0), _grain(image)  # its own shadows
    # Give the hole the background's own grain so it does not read as a flat sticker.
    texture = _blur(rng.standard_normal((h, w)).astype(np.float32), 0.8) * (grain / 0.35)
    target = np.clip(fill.astype(np.float32) + texture[..., None], 0, 255)
    out, mask = composite(image, _blur(bite, 0.6), target)
    # The fresh fracture face catches the light: a thin bright rim along the bite, on the object.
    rim = (_blur(bite, max(1.0, _unit(image))) - bite).clip(0, 1) * body * 1.8
    out, rim_mask = composite(out, np.clip(rim, 0, 0.7), 255 - (255 - out.astype(np.float32)) * 0.5)
    return out, np.maximum(mask, rim_mask)


def _contamination(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """Foreign matter lying on the surface: a hair or fibre, or a blob of grease/dirt of its own colour."""
    h, w = image.shape[:2]
    u = _unit(image)
    colour = _matched_colour(image, _CONTAMINANTS[int(rng.integers(len(_CONTAMINANTS)))] * rng.uniform(0.85, 1.15))
    if rng.random() < 0.5:  # a fibre: long, thin and curly, a little out of focus above the surface
        length = min(h, w) * rng.uniform(0.3, 0.6) * scale
        c, heading = _centre(image, rng, length / 2, region), rng.uniform(0, 2 * np.pi)
        start = c - length / 2 * np.array([np.cos(heading), np.sin(heading)])  # centred on c
        path = _walk(rng, start, heading, length, max(1.5, 2 * u), 0.18)
        alpha = _blur(_draw_path((h, w), path, max(1, round(u * scale * rng.uniform(0.7, 1.5)))), 0.5 * u)
        grain = 0.1
    else:  # a blob with its own grainy texture
        radius = _blob_radius(image, rng, scale, 0.002, 0.012)
        c = _centre(image, rng, radius, region)
        alpha = _blur(_draw_blob((h, w), c, radius, rng, roughness=0.4), max(0.5, 0.12 * radius))
        grain = 0.25
    alpha *= rng.uniform(0.8, 0.95)
    noise = _blur(rng.standard_normal((h, w)).astype(np.float32), 1.2 * u)
    target = colour * (1 + grain * noise / max(1e-6, float(noise.std())))[..., None]
    return composite(image, _clip_to(alpha, region), np.clip(target, 0, 255))


def _missing_feature(image: np.ndarray, rng: np.random.Generator, scale: float, region: np.ndarray | None):
    """A feature (hole, print, edge detail) gone: a patch inpainted from its surroundings."""
    h, w = image.shape[:2]
    radius = _blob_radius(image, rng, scale, 0.003, 0.02)
    # Aim at detail, not at flat ground: of a few candidate spots, take the one with most edges.
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = _blur(np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=3)), max(1.0, radius / 2))
    candidates = [_centre(image, rng, radius, region) for _ in range(16)]
    c = max(candidates, key=lambda p: energy[int(np.clip(p[1], 0, h - 1)), int(np.clip(p[0], 0, w - 1))])
    blob = _draw_blob((h, w), c, radius, rng, roughness=0.15)
    hole = cv2.dilate((blob > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    filled = cv2.inpaint(image, hole, max(3.0, 3 * _unit(image)), cv2.INPAINT_TELEA).astype(np.float32)
    # Inpainting is smooth; real surfaces are not: add noise as strong as the image's own fine grain.
    filled += rng.normal(0, _grain(image), (h, w, 1)).astype(np.float32)
    alpha = _blur(blob, max(0.6, 0.8 * _unit(image)))
    return composite(image, _clip_to(alpha, region), np.clip(filled, 0, 255))


_PAINTERS: dict[str, Painter] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "chip": _chip,
    "contamination": _contamination,
    "missing_feature": _missing_feature,
}
