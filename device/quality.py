"""RankNet scorers on the station: the capture-quality gate and the grade ranker (no torch).

Both are small ONNX models in the bundle (roles ``quality`` and ``grade``) that map a frame to one
number, higher = better. The gate compares that number with the quality floor calibrated at export
time: a frame below it gets the verdict ``retake`` instead of being judged.

The model input (:class:`RankerInput`) is defined here, once, and training imports it, so a frame
is prepared identically on both sides.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from device.errors import BundleError, KenpinError

if TYPE_CHECKING:  # the runtime needs no import of the bundle module at load time
    from device.bundle import Bundle, Ranker

ROLES = ("quality", "grade")


@dataclass(frozen=True)
class RankerInput:
    """How a frame becomes the ranker's input: 1 x (1 + crops) x size x size float32 in [0, 1].

    Channel 0 is the whole frame in gray, area-resized to ``size`` (blur, exposure, glare and
    occlusion show at low resolution). Channels 1.. are ``crops`` crops of ``size`` px at native
    resolution (sensor noise is a per-pixel signal that any down-scaling averages away).
    """

    size: int = 64
    crops: int = 4
    # "frame": the camera frame as above. "anomaly": the bundle's own patch-distance map of the
    # frame (in units of its threshold), resized to size x size — what a grade of defect severity
    # needs, since the anomaly model already knows where the frame departs from good parts.
    source: str = "frame"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= 512 or self.size % 8:
            raise KenpinError(f"input.size = {self.size!r}: use a multiple of 8 between 16 and 512")
        if not isinstance(self.crops, int) or not 0 <= self.crops <= 16:
            raise KenpinError(f"input.crops = {self.crops!r}: use 0 to 16")
        if self.source not in ("frame", "anomaly"):
            raise KenpinError(f"input.source = {self.source!r}: use 'frame' or 'anomaly'")
        if self.source == "anomaly" and self.crops:
            raise KenpinError(f"input.crops = {self.crops}: an anomaly-map input has no crops; use 0")

    @property
    def channels(self) -> int:
        return 1 + self.crops

    @property
    def shape(self) -> list[int]:
        return [1, self.channels, self.size, self.size]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def gray(frame: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """HxW or HxWx3 frame → gray in its own type, and the factor that scales it to [0, 1].

        uint8 and uint16 frames stay integers until after resizing and cropping (converting the
        whole frame to float first costs more than the model); float frames are taken as [0, 1].
        """
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.shape[2] == 3 else frame[..., 0]
        if frame.dtype == np.uint8:
            return frame, np.float32(1 / 255)
        if frame.dtype == np.uint16:
            return frame, np.float32(1 / 65535)
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

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame → the model input (float path: a float frame is never rounded to 8 bits)."""
        g, unit = self.gray(frame)
        h, w = g.shape
        if min(h, w) < self.size:  # a frame smaller than a crop: enlarge it (nothing else works)
            f = self.size / min(h, w)
            g = cv2.resize(g, (max(self.size, round(w * f)), max(self.size, round(h * f))), interpolation=cv2.INTER_LINEAR)
            h, w = g.shape
        out = np.empty(self.shape, np.float32)
        out[0, 0] = self.thumbnail(g)
        for i, (y, x) in enumerate(self.crop_corners(h, w)):
            out[0, 1 + i] = g[y:y + self.size, x:x + self.size]
        out *= unit
        return out

    def from_map(self, distances: np.ndarray) -> np.ndarray:
        """A patch-distance map (grid, in units of the threshold) → the model input 1 x 1 x size x size."""
        m = cv2.resize(distances.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return m[None, None]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankerInput":
        unknown = set(d) - {"size", "crops", "source"}
        if unknown:
            raise KenpinError(f"input: unknown key(s) {sorted(unknown)}; known: ['crops', 'size', 'source']")
        return cls(**d)


def anomaly_map(inspector: Any, rgb: np.ndarray) -> np.ndarray:
    """The frame's patch distances to the reference bank on the model's grid, in units of the threshold."""
    v = inspector.variant
    return inspector.scorer.distances(inspector.embed(rgb)).reshape(v.grid) / np.float32(v.normalization.threshold)


class _Scorer:
    """One ranker model in an ONNX Runtime session."""

    def __init__(self, ranker: "Ranker", precision: str = "int8", threads: int = 1) -> None:
        from device.runtime import make_session  # lazy: device.runtime imports device.bundle

        self.ranker = ranker
        self.prepare = ranker.input
        self.model = ranker.model if precision == "int8" else ranker.fp32_model
        self.session = make_session(self.model, threads)
        self._input = self.session.get_inputs()[0].name
        out = self.session.run(None, {self._input: np.zeros(self.prepare.shape, np.float32)})[0]
        if out.shape != (1, 1):
            raise BundleError(f"{self.model}: output shape {out.shape} is not (1, 1); not a ranker model")

    def _score(self, frame: np.ndarray) -> float:
        return float(self.session.run(None, {self._input: self.prepare(frame)})[0][0, 0])


class QualityGate(_Scorer):
    """Capture quality of a frame (higher = better) and the calibrated floor below which it is retaken."""

    @classmethod
    def from_bundle(cls, bundle: "Bundle", threads: int = 1, precision: str = "int8") -> "QualityGate | None":
        """The bundle's quality gate, or None when the bundle has no quality model."""
        r = bundle.rankers.get("quality")
        return None if r is None else cls(r, precision, threads)

    def score(self, rgb: np.ndarray) -> float:
        """HxWx3 uint8 RGB frame (or a float frame in [0, 1], or uint16) → capture quality."""
        return self._score(rgb)

    @property
    def floor(self) -> float:
        return float(self.ranker.floor)

    def passes(self, quality: float) -> bool:
        """Good enough to judge: quality at or above the floor."""
        return quality >= self.floor


class Grader(_Scorer):
    """A grade learnt from operators' judgements: higher = ranked higher by them."""

    def __init__(self, ranker: "Ranker", precision: str = "int8", threads: int = 1, bundle: "Bundle | None" = None) -> None:
        super().__init__(ranker, precision, threads)
        self._inspector = None
        if ranker.input.source == "anomaly":
            from device.runtime import Inspector

            if bundle is None:
                raise BundleError(f"{ranker.model}: this grade reads the anomaly map; open it with Grader.from_bundle")
            self._inspector = Inspector(bundle, precision, threads)

    @classmethod
    def from_bundle(cls, bundle: "Bundle", threads: int = 1, precision: str = "int8") -> "Grader | None":
        """The bundle's grade ranker, or None when the bundle has none."""
        r = bundle.rankers.get("grade")
        return None if r is None else cls(r, precision, threads, bundle)

    def grade(self, rgb: np.ndarray) -> float:
        """HxWx3 uint8 RGB frame → grade (a score; compare grades, or read :meth:`percentile`)."""
        if self._inspector is None:
            return self._score(rgb)
        return self.grade_map(anomaly_map(self._inspector, rgb))

    def grade_map(self, distances: np.ndarray) -> float:
        """Grade from a patch-distance map the station already computed (anomaly-map grades only)."""
        return float(self.session.run(None, {self._input: self.prepare.from_map(distances)})[0][0, 0])

    def percentile(self, grade: float) -> float:
        """Share (0–1) of the images it was trained on that grade below ``grade``."""
        ref = self.ranker.reference_scores
        return float(np.searchsorted(ref, grade, side="right") / len(ref)) if ref else float("nan")


def best_of(gate: QualityGate, frames: Sequence[np.ndarray]) -> tuple[int, float]:
    """Burst capture: index and quality of the best of ``frames`` (the first of equals)."""
    if not frames:
        raise KenpinError("best_of: no frames to choose from; capture at least one")
    scores = [gate.score(f) for f in frames]
    i = int(np.argmax(scores))
    return i, scores[i]
