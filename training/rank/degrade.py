"""Realistic capture degradations at graded strengths, on float images in [0, 1].

Everything works on float32 HxW (gray) or HxWx3 images so that tiny sensor noise (σ = 0.001 is a
quarter of one 8-bit level) survives until the caller decides whether to round to uint8.

Each kind has a *training grid* of parameters and a separate *evaluation grid* that lies between
the training values, so evaluation measures parameters the scorer never saw.
"""
from __future__ import annotations

import cv2
import numpy as np

# Per kind: the parameter values training draws from (worst last), and held-out evaluation values.
TRAIN_GRID: dict[str, tuple[float, ...]] = {
    "noise": (0.0007, 0.0015, 0.003, 0.006, 0.013, 0.025, 0.05, 0.1),  # σ on [0, 1]
    "defocus": (0.7, 1.2, 2.0, 3.0, 4.5, 6.5),  # disk radius, px
    "motion": (2.0, 3.5, 5.5, 8.0, 12.0),  # streak length, px
    "under": (0.85, 0.7, 0.55, 0.4, 0.25),  # exposure gain < 1
    "over": (1.2, 1.45, 1.75, 2.2, 3.0),  # exposure gain > 1 (clips)
    "gamma_dark": (1.25, 1.6, 2.0, 2.6),  # out = in ** γ
    "gamma_bright": (0.8, 0.62, 0.5, 0.38),
    "jpeg": (45.0, 30.0, 20.0, 12.0, 7.0),  # JPEG quality
    "glare": (0.25, 0.45, 0.7, 1.0),  # peak added light
    "occlusion": (0.06, 0.12, 0.2, 0.32),  # occluded share of the frame
}
EVAL_GRID: dict[str, tuple[float, ...]] = {
    "noise": (0.001, 0.002, 0.005, 0.01, 0.02),
    "defocus": (1.5, 2.5, 4.0),
    "motion": (3.0, 4.5, 7.0),
    "under": (0.78, 0.62, 0.5),
    "over": (1.3, 1.6, 2.0),
    "gamma_dark": (1.4, 1.8),
    "gamma_bright": (0.7, 0.55),
    "jpeg": (35.0, 15.0),
    "glare": (0.35, 0.6),
    "occlusion": (0.09, 0.25),
}
KINDS = tuple(TRAIN_GRID)
# Capture-quality families: kinds that move a frame's features the same way, so one score column
# can rank all of them against the clean frame. Noise adds fine detail that blur and JPEG remove,
# and under- and over-exposure shift brightness in opposite directions: a single score puts the
# clean frame between them and orders one side backwards (BENCHMARKS.md, RankNet).
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("noise",),
    "sharpness": ("defocus", "motion", "jpeg"),
    "dark": ("under", "gamma_dark"),
    "bright": ("over", "gamma_bright"),
    "obstruction": ("glare", "occlusion"),
}


def _disk(radius: float) -> np.ndarray:
    """Defocus point-spread function: a uniform disk, anti-aliased by supersampling."""
    r = int(np.ceil(radius))
    ss = 4
    g = (np.arange(-r * ss, (r + 1) * ss) + 0.5 - ss / 2) / ss
    yy, xx = np.meshgrid(g, g, indexing="ij")
    k = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    k = cv2.resize(k, (2 * r + 1, 2 * r + 1), interpolation=cv2.INTER_AREA)
    return k / k.sum()


def _streak(length: float, angle: float) -> np.ndarray:
    """Motion point-spread function: a line of ``length`` px at ``angle`` radians."""
    r = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    cv2.line(k, (int(round((r - dx) * 16)), int(round((r - dy) * 16))),
             (int(round((r + dx) * 16)), int(round((r + dy) * 16))), 1.0, 1, cv2.LINE_AA, shift=4)
    return k / k.sum()


def _jpeg(img: np.ndarray, quality: float) -> np.ndarray:
    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
    return out.reshape(img.shape)


def _glare(img: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """A specular highlight: a soft elliptical blob of added light that saturates."""
    h, w = img.shape[:2]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    sy, sx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)) * peak
    return img + (blob[..., None] if img.ndim == 3 else blob)


def _occlusion(img: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Something between camera and part (a hand, a cable): a blurred-edged patch of flat tone."""
    h, w = img.shape[:2]
    aspect = rng.uniform(0.5, 2.0)
    ph = int(np.clip(np.sqrt(share * h * w / aspect), 4, h))
    pw = int(np.clip(share * h * w / ph, 4, w))
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    mask = np.zeros((h, w), np.float32)
    mask[y:y + ph, x:x + pw] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 2.0)
    tone = rng.uniform(0.02, 0.25) if rng.random() < 0.7 else rng.uniform(0.75, 0.95)
    m = mask[..., None] if img.ndim == 3 else mask
    return img * (1 - m) + tone * m


def degrade(img: np.ndarray, kind: str, param: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` (float32 in [0, 1]) with one degradation of ``kind`` at ``param``; float32, clipped to [0, 1]."""
    x = img.astype(np.float32, copy=False)
    if kind == "noise":
        out = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(param)
    elif kind == "defocus":
        out = cv2.filter2D(x, -1, _disk(param), borderType=cv2.BORDER_REFLECT)
    elif kind == "motion":
        out = cv2.filter2D(x, -1, _streak(param, rng.uniform(0, np.pi)), borderType=cv2.BORDER_REFLECT)
    elif kind in ("under", "over"):
        out = x * np.float32(param)
    elif kind in ("gamma_dark", "gamma_bright"):
        out = np.power(np.clip(x, 0, 1), np.float32(param))
    elif kind == "jpeg":
        out = _jpeg(x, param)
    elif kind == "glare":
        out = _glare(x, param, rng)
    elif kind == "occlusion":
        out = _occlusion(x, param, rng)
    else:
        raise ValueError(f"unknown degradation {kind!r}; known: {KINDS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def to_float(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 image → float32 in [0, 1]."""
    return rgb_u8.astype(np.float32) * np.float32(1.0 / 255.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] → uint8, rounded (what an 8-bit camera delivers)."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
