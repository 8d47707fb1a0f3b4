"""The bundle's probe set: images the station scores at load to prove the bundle on its own CPU.

Held-out good images (the ones calibration used) and synthetic-defect images (the ones parity
used), stored at the model's input size so that the station's preprocessing is a plain
normalization of them: the tensors are exactly the ones the export scored. Each image is
lossless WebP (decoding is exact on every CPU; about 60 KB at 384 px against 440 KB raw), gray
images as one channel, all in one ``.npz`` of byte arrays (no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.errors import BundleError

PROBES_FILE = "probes.npz"
_LOSSLESS = [cv2.IMWRITE_WEBP_QUALITY, 101]  # quality above 100 selects WebP's lossless mode


@dataclass(frozen=True)
class Probes:
    """Decoded probe images, HxWx3 uint8 RGB at the model's input size."""

    good: list[np.ndarray]
    defect: list[np.ndarray]

    @property
    def all(self) -> list[np.ndarray]:
        """Good then defect: the order of a variant's recorded probe scores."""
        return [*self.good, *self.defect]


def _encode(rgb: np.ndarray) -> np.ndarray:
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    img = rgb[..., 0] if gray else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".webp", np.ascontiguousarray(img), _LOSSLESS)
    if not ok:
        raise BundleError("probe image: OpenCV could not encode it as lossless WebP")
    return buf.reshape(-1)


def encoded_bytes(rgb: np.ndarray) -> int:
    """Bytes one probe image takes in the probe file (lossless WebP; zip entry overhead not counted)."""
    return int(_encode(rgb).size)


def write_probes(path: Path, good: list[np.ndarray], defect: list[np.ndarray]) -> None:
    """Store probe images (HxWx3 uint8 RGB, already at the model's input size)."""
    arrays = {f"good_{i:04d}": _encode(im) for i, im in enumerate(good)}
    arrays.update({f"defect_{i:04d}": _encode(im) for i, im in enumerate(defect)})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _decode(path: Path, key: str, buf: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.shape[:2] != (size[1], size[0]):
        got = None if img is None else f"{img.shape[1]}x{img.shape[0]}"
        raise BundleError(f"{path}: probe {key} is not a {size[0]}x{size[1]} image (got {got}); "
                          "the probe file is damaged — re-export the bundle")
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_probes(path: Path, n_good: int, n_defect: int, size: tuple[int, int]) -> Probes:
    """Decode the probe file; ``size`` is the model's (width, height). BundleError names what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            good = [_decode(path, k, z[k], size) for k in (f"good_{i:04d}" for i in range(n_good))]
            defect = [_decode(path, k, z[k], size) for k in (f"defect_{i:04d}" for i in range(n_defect))]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: not a readable probe file with {n_good} good and {n_defect} defect "
                          f"images ({e}); re-export the bundle") from None
    return Probes(good, defect)
