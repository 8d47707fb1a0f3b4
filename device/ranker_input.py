"""What a RankNet scorer reads, and what it is: the description a bundle's manifest carries (no torch).

A ranker has a role (:data:`ROLES`: the capture-quality gate or the grade), an input
(:class:`RankerInput`: how a frame, the anomaly map or the patch embeddings become one tensor) and,
for the gate, one output column per quality family (:class:`QualityFamily`). The bundle reads these
from the manifest, the station prepares its input with them and training imports the same
definitions, so a frame is prepared identically on both sides.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from device.errors import KenpinError

ROLES = ("quality", "grade")
SOURCES = ("frame", "anomaly", "embedding")  # what a ranker reads: RankerInput.source


@dataclass(frozen=True)
class QualityFamily:
    """One output of a capture-quality model: the degradations it ranks, and its own floor.

    Noise adds fine detail that blur removes, and under- and over-exposure move brightness in
    opposite directions, so one score cannot rank them all against a clean frame (a clean frame
    sits between its blurred and its noisy versions). Each family gets its own score column; a
    frame is judged only when every family is at or above its floor.
    """

    name: str
    kinds: tuple[str, ...]  # the degradations this column was trained to rank (for reports)
    floor: float  # calibrated on held-out clean frames
    scale: float  # spread of held-out clean frames' scores: margins of families compare in these units

    def __post_init__(self) -> None:
        if not self.name or not math.isfinite(self.floor) or not (math.isfinite(self.scale) and self.scale > 0):
            raise KenpinError(f"quality family {self.name!r}: needs a name, a finite floor and a scale > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kinds": list(self.kinds), "floor": self.floor, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QualityFamily":
        return cls(str(d["name"]), tuple(str(k) for k in d.get("kinds", ())), float(d["floor"]), float(d["scale"]))


@dataclass(frozen=True)
class VerdictGuard:
    """The part of the gate that follows the verdict: a frame only mildly degraded is still retaken
    when its anomaly score lies near the threshold, where a little degradation flips the verdict.

    A frame is retaken when its quality is below 0 (any family under its floor), or below
    ``margin`` while its score is within ``band`` of the threshold, in units of the normalization's
    scale (``|raw − raw threshold| / scale``). Calibrated at export on held-out train frames against
    verdict flips (``rankers.quality.calibration.verdict_flips``).
    """

    margin: float  # quality (clean spreads above the floors) below which a near-threshold frame is retaken
    band: float  # |z| of the anomaly score around the threshold that counts as near

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0 and math.isfinite(self.band) and self.band >= 0):
            raise KenpinError(f"verdict guard {self}: margin and band must be finite and ≥ 0")

    def retakes(self, quality: float, z: float) -> bool:
        """A frame passing the floors, retaken for being degraded while near the threshold."""
        return quality < self.margin and abs(z) < self.band

    def to_dict(self) -> dict[str, float]:
        return {"margin": self.margin, "band": self.band}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VerdictGuard":
        return cls(float(d["margin"]), float(d["band"]))


@dataclass(frozen=True)
class RankerInput:
    """How a frame becomes the ranker's input: 1 x (1 + crops [+ 1]) x size x size float32.

    Channel 0 is the whole frame in gray, area-resized to ``size`` (blur, exposure, glare and
    occlusion show at low resolution). Channels 1.. are ``crops`` crops of ``size`` px at native
    resolution (sensor noise is a per-pixel signal that any down-scaling averages away). With
    ``stats`` a last channel carries a vector of whole-frame statistics at native resolution
    (:data:`FRAME_STATS`, or :data:`MAP_STATS` for an anomaly map) in the first cells of its
    first row, zeros elsewhere: one input tensor, so the bundle format, the int8 export and the
    station's session stay as they were, and the model slices the vector out before any convolution.
    """

    size: int = 64
    crops: int = 4
    # "frame": the camera frame as above. "anomaly": the bundle's own patch-distance map of the
    # frame (in units of its threshold), resized to size x size. "embedding": the anomaly model's
    # patch embeddings of the frame, pooled (:func:`grade_vector`) into the first cells of one
    # size x size plane — what a grade of defect severity needs: the pretrained features know the
    # kind and extent of what departs from good parts, which a coarse distance map does not.
    source: str = "frame"
    # Whole-frame statistics as an extra plane (see above). Absent in a manifest = False, so a
    # bundle written before the key existed keeps its input shape and loads unchanged.
    stats: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= 512 or self.size % 8:
            raise KenpinError(f"input.size = {self.size!r}: use a multiple of 8 between 16 and 512")
        if not isinstance(self.crops, int) or not 0 <= self.crops <= 16:
            raise KenpinError(f"input.crops = {self.crops!r}: use 0 to 16")
        if self.source not in SOURCES:
            raise KenpinError(f"input.source = {self.source!r}: use one of {list(SOURCES)}")
        if self.source != "frame" and self.crops:
            raise KenpinError(f"input.crops = {self.crops}: an {self.source} input has no crops; use 0")
        if self.source == "embedding" and self.stats is True:
            raise KenpinError("input.stats = true: an embedding input already carries the map statistics; use false")
        if not isinstance(self.stats, bool):
            raise KenpinError(f"input.stats = {self.stats!r}: use true or false")

    @property
    def channels(self) -> int:
        return 1 + self.crops + int(self.stats)

    @property
    def n_stats(self) -> int:
        """Length of the statistics vector in the last channel (0 without ``stats``)."""
        if not self.stats:
            return 0
        return len(MAP_STATS if self.source == "anomaly" else FRAME_STATS)

    @property
    def shape(self) -> list[int]:
        return [1, self.channels, self.size, self.size]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def gray(frame: np.ndarray, bits: int | None = None) -> tuple[np.ndarray, np.float32]:
        """HxW or HxWx3 frame → gray in its own type, and the factor that scales it to [0, 1].

        uint8 and uint16 frames stay integers until after resizing and cropping (converting the
        whole frame to float first costs more than the model); float frames are taken as [0, 1].
        ``bits``: the significant bits of an integer frame, whose full scale is 2**bits − 1 (a 12-bit
        sensor's raw values in uint16 are 0…4095: ``bits=12``); by default the type's own width (8, 16).
        """
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.shape[2] == 3 else frame[..., 0]
        if frame.dtype in (np.uint8, np.uint16):
            return frame, np.float32(1 / (2 ** significant_bits(frame.dtype, bits) - 1))
        return frame.astype(np.float32, copy=False), np.float32(1)

    def thumbnail(self, g: np.ndarray) -> np.ndarray:
        """Area-average down to size x size in two steps: a linear resize to an integer multiple,
        then an integer-factor area resize (OpenCV's general area resize costs ~3x more)."""
        k = max(1, min(g.shape) // self.size)
        s = self.size * k
        if k > 1:
            g = cv2.resize(g, (s, s), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(g, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def crop_corners(self, h: int, w: int) -> list[tuple[int, int]]:
        """Top-left corners of the native crops: cell centres of a grid over the central 80 %."""
        n = math.ceil(math.sqrt(self.crops)) if self.crops else 0
        corners = []
        for i in range(self.crops):
            fy, fx = (i // n + 0.5) / n, (i % n + 0.5) / n
            cy, cx = 0.1 * h + 0.8 * h * fy, 0.1 * w + 0.8 * w * fx
            y = int(np.clip(round(cy - self.size / 2), 0, h - self.size))
            x = int(np.clip(round(cx - self.size / 2), 0, w - self.size))
            corners.append((y, x))
        return corners

    def __call__(self, frame: np.ndarray, bits: int | None = None) -> np.ndarray:
        """One frame → the model input (float path: a float frame is never rounded to 8 bits);
        ``bits`` as in :meth:`gray`."""
        g, unit = self.gray(frame, bits)
        h, w = g.shape
        if min(h, w) < self.size:  # a frame smaller than a crop: enlarge it (nothing else works)
            f = self.size / min(h, w)
            g = cv2.resize(g, (max(self.size, round(w * f)), max(self.size, round(h * f))), interpolation=cv2.INTER_LINEAR)
            h, w = g.shape
        out = np.zeros(self.shape, np.float32)
        out[0, 0] = self.thumbnail(g)
        for i, (y, x) in enumerate(self.crop_corners(h, w)):
            out[0, 1 + i] = g[y:y + self.size, x:x + self.size]
        out[0, : 1 + self.crops] *= unit
        if self.stats:
            self._put_stats(out, frame_stats(g, unit))
        return out

    def from_map(self, distances: np.ndarray) -> np.ndarray:
        """A patch-distance map (grid, in units of the threshold) → the model input 1 x C x size x size."""
        out = np.zeros(self.shape, np.float32)
        out[0, 0] = cv2.resize(distances.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.stats:
            self._put_stats(out, map_stats(distances))
        return out

    def from_embedding(self, patches: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Patch embeddings (P x D) and their distances (P, in units of the threshold) → the model
        input: :func:`grade_vector` in the first cells of one size x size plane, zeros after it."""
        v = grade_vector(patches, distances)
        if len(v) > self.size * self.size:
            need = int(math.ceil(math.sqrt(len(v)) / 8) * 8)
            raise KenpinError(f"input.size = {self.size} holds {self.size ** 2} values; this bundle's embedding "
                              f"vector has {len(v)}: use input.size ≥ {need}")
        out = np.zeros(self.shape, np.float32)
        out[0, 0].reshape(-1)[: len(v)] = v
        return out

    def _put_stats(self, out: np.ndarray, v: np.ndarray) -> None:
        plane = out[0, -1]
        plane[:] = 0.0
        plane.reshape(-1)[: len(v)] = v

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankerInput":
        known = {"size", "crops", "source", "stats"}
        unknown = set(d) - known
        if unknown:
            raise KenpinError(f"input: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def significant_bits(dtype: np.dtype, bits: int | None) -> int:
    """The bits an integer frame of ``dtype`` uses: ``bits``, or the type's width when None.

    The convention for deeper sensors: a frame keeps its sensor's own values (a 12-bit raw pixel
    stays 0…4095 in its uint16) and says how many bits they use, so full scale is 2**bits − 1 and
    a 12-bit frame reads the same as its 8-bit rendering of the same light, never 1/16 of it."""
    width = np.dtype(dtype).itemsize * 8
    if bits is None:
        return width
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= width:
        raise KenpinError(f"bits = {bits!r}: a {np.dtype(dtype).name} frame uses 1 to {width} bits")
    return int(bits)


# Whole-frame statistics at native resolution, each shifted to near 0. Log energies stay in
# natural-log units (σ = 0.001 moves haar1 by ~0.004): shrinking them would only make the head's
# weights grow longer before the one-image differences count.
# Haar detail energies at three scales: white noise adds σ² to every band (most, relative to the
# scene, to the finest), blur removes energy from the fine bands first, so their pattern tells the
# two apart; summed over the whole frame (~1e5 pixels) the added σ² = 1e-6 is ~10 standard
# deviations of the texture's own fluctuation. Mean / sd / clipped shares: exposure and glare.
# (A median-based "MAD" noise estimate was tried and left out: on 8-bit frames the median of the
# finest band is quantized and moved for 3 % of frames at σ = 0.001, while the mean energy moved for 99 %.)
FRAME_STATS = ("haar1", "haar2", "haar3", "log_mean", "log_sd", "clipped_dark", "clipped_bright")
# Anomaly map (in units of the threshold): the share of the map above several levels tracks a
# defect's area, the summed excess its area times depth, the peak its worst point.
MAP_LEVELS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
MAP_STATS = (*(f"above_{t:g}" for t in MAP_LEVELS), "mean_excess", "log_peak", "mean")


def _detail_energy(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared Haar detail coefficient of one level of ``x`` (float32), and its 2x2 block means.

    An orthonormal Haar step keeps a block's energy: sum(x²) = 4·mean² + the three details², so
    the details' energy is sum(x²) − 4·sum(block means²), both summed in float64 by OpenCV (no
    band images are built: the whole frame costs two passes)."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    if not h or not w:  # a frame too small for this level: no detail left to measure
        return 0.0, x
    x = x[:h, :w]
    m = cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    detail = cv2.norm(x, cv2.NORM_L2SQR) - 4.0 * cv2.norm(m, cv2.NORM_L2SQR)
    return max(detail, 0.0) / (3 * m.size), m


def frame_stats(g: np.ndarray, unit: float) -> np.ndarray:
    """Gray frame (its own type) and its scale to [0, 1] → the :data:`FRAME_STATS` vector (float32)."""
    x = g.astype(np.float32) * np.float32(unit)
    out, m = [], x
    for level in range(3):
        e, m = _detail_energy(m)
        # 4**level: block means → orthonormal Haar units, so the scales compare like the crop branch's
        out.append(math.log(e * 4.0 ** level + 1e-12) + 8.0)
    mean, sd = (float(v[0, 0]) for v in cv2.meanStdDev(x))
    lo, hi = 0.5 / 255, 254.5 / 255  # an 8-bit camera's 0 and 255 (and the same levels of deeper frames)
    n = x.size
    out += [math.log(mean + 1e-3) + 1.0, math.log(sd + 1e-4) + 2.0,
            np.count_nonzero(x <= lo) / n, np.count_nonzero(x >= hi) / n]
    return np.asarray(out, np.float32)


def map_stats(distances: np.ndarray) -> np.ndarray:
    """Patch-distance map in units of the threshold → the :data:`MAP_STATS` vector (float32)."""
    d = distances.astype(np.float64)
    above = [float((d > t).mean()) for t in MAP_LEVELS]
    return np.asarray([*above, float(np.maximum(d - 1.0, 0.0).mean()), math.log1p(max(float(d.max()), 0.0)),
                       float(d.mean())], np.float32)


GRADE_TOP_PATCHES = 8  # the most distant patches: what the defect itself looks like


def grade_vector(patches: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Pooled patch embeddings for a grade: mean and max over the frame, mean of the
    :data:`GRADE_TOP_PATCHES` patches farthest from good parts, then :data:`MAP_STATS`."""
    top = patches[np.argsort(distances)[-GRADE_TOP_PATCHES:]]
    return np.concatenate([patches.mean(0), patches.max(0), top.mean(0), map_stats(distances)]).astype(np.float32)
