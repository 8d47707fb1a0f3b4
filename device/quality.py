"""RankNet scorers on the station: the capture-quality gate and the grade ranker (no torch).

Both are small ONNX models in the bundle (roles ``quality`` and ``grade``), higher = better. The
gate gives one score per quality family (:class:`~device.ranker_input.QualityFamily`) and compares
each with its floor calibrated at export time: a frame below any floor gets the verdict ``retake``
instead of being judged. The grade gives one number, read as the share of operator-rated parts a
part ranks above. What each reads is :class:`~device.ranker_input.RankerInput`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from device.bundle import Bundle, Ranker
from device.errors import BundleError, KenpinError
from device.session import OnnxModel


class _Scorer:
    """One ranker model in an ONNX Runtime session."""

    def __init__(self, ranker: Ranker, precision: str = "int8", threads: int = 1) -> None:
        self.ranker = ranker
        self.prepare = ranker.input
        self.model = ranker.model if precision == "int8" else ranker.fp32_model
        self.net = OnnxModel(self.model, threads)
        out = self.net(np.zeros(self.prepare.shape, np.float32))
        columns = max(1, len(ranker.families))
        if out.shape != (1, columns):
            raise BundleError(f"{self.model}: output shape {out.shape} is not (1, {columns}); "
                              "not the ranker its manifest describes")

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One prepared input (1 x C x S x S) → its output row."""
        return self.net(x)[0]

    def _raw(self, frame: np.ndarray, bits: int | None = None) -> np.ndarray:
        return self._run(self.prepare(frame, bits))

    def _score(self, frame: np.ndarray, bits: int | None = None) -> float:
        return float(self._raw(frame, bits)[0])


class QualityGate(_Scorer):
    """Capture quality of a frame (higher = better) and the calibrated floor below which it is retaken.

    With quality families (bundles since the per-family gate) the quality of a frame is its
    weakest family's margin above that family's floor, in units of the family's clean spread, and
    the floor is 0; a bundle with a single score keeps that score and its floor.

    Integer frames deeper than 8 bits (a sensor's raw stream) pass ``bits``, their significant bits:
    a 12-bit frame in uint16 is scaled by 4095, not 65535 (:func:`~device.ranker_input.significant_bits`).
    """

    def __init__(self, ranker: Ranker, precision: str = "int8", threads: int = 1) -> None:
        super().__init__(ranker, precision, threads)
        fams = ranker.families
        self._floors = np.array([f.floor for f in fams], np.float32)
        self._scales = np.array([f.scale for f in fams], np.float32)

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 1, precision: str = "int8") -> QualityGate | None:
        """The bundle's quality gate, or None when the bundle has no quality model."""
        r = bundle.rankers.get("quality")
        return None if r is None else cls(r, precision, threads)

    @property
    def families(self) -> tuple[str, ...]:
        """Names of the quality families, one per model output (empty for a single-score gate)."""
        return tuple(f.name for f in self.ranker.families)

    def margins(self, rgb: np.ndarray, bits: int | None = None) -> np.ndarray:
        """Per family: (score − floor) / clean spread; a frame passes when every margin is ≥ 0.
        A single-score gate gives one value: score − floor."""
        raw = self._raw(rgb, bits)
        if not self.ranker.families:
            return raw[:1] - np.float32(self.ranker.floor)
        return (raw - self._floors) / self._scales

    def family_scores(self, rgb: np.ndarray) -> np.ndarray:
        """The model's raw score per family (per output column), higher = better."""
        return self._raw(rgb)

    def score(self, rgb: np.ndarray, bits: int | None = None) -> float:
        """HxWx3 uint8 RGB frame (or a float frame in [0, 1], or uint16 of ``bits``) → capture quality."""
        return self.assess(rgb, bits)[0]

    def assess(self, rgb: np.ndarray, bits: int | None = None) -> tuple[float, str]:
        """Quality and the family that limits it (why a frame is retaken), from one run of the model."""
        if not self.ranker.families:
            return self._score(rgb, bits), "quality"
        m = self.margins(rgb, bits)
        i = int(np.argmin(m))
        return float(m[i]), self.families[i]

    def weakest(self, rgb: np.ndarray) -> str:
        """The family that limits the frame's quality (why a frame was retaken)."""
        return self.assess(rgb)[1]

    @property
    def floor(self) -> float:
        return 0.0 if self.ranker.families else float(self.ranker.floor)

    def passes(self, quality: float) -> bool:
        """Above the floors: not degraded enough to retake whatever the verdict."""
        return quality >= self.floor

    @property
    def follows_verdicts(self) -> bool:
        """True when the gate was calibrated against verdict flips (it also retakes mildly degraded
        frames near the threshold); False for a gate with floors set on clean frames only."""
        return self.ranker.guard is not None

    def retakes(self, quality: float, z: float) -> bool:
        """Retake instead of judging: below the floors, or (a gate that follows verdicts) mildly
        degraded while the anomaly score ``z`` (distance from the threshold in units of the
        normalization's scale) is near enough to the threshold for the degradation to flip it."""
        if not self.passes(quality):
            return True
        return self.ranker.guard is not None and self.ranker.guard.retakes(quality, z)


class Grader(_Scorer):
    """A grade learnt from operators' judgements: higher = ranked higher by them.

    A grade reads the frame itself (input source ``frame``) or what the anomaly model makes of it
    (``anomaly``, ``embedding``). The latter is graded from what judging the frame computed
    (:meth:`grade_judged`); :meth:`device.runtime.Inspector.grade` grades a whole frame of either kind.
    """

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 1, precision: str = "int8") -> Grader | None:
        """The bundle's grade ranker, or None when the bundle has none."""
        r = bundle.rankers.get("grade")
        return None if r is None else cls(r, precision, threads)

    @property
    def reads_anomaly_model(self) -> bool:
        """True when the grade's input is the anomaly model's view of the frame, not the frame."""
        return self.prepare.source != "frame"

    def grade(self, rgb: np.ndarray) -> float:
        """HxWx3 uint8 RGB frame → grade (a score; compare grades, or read :meth:`percentile`)."""
        if self.reads_anomaly_model:
            raise BundleError(f"{self.model}: this grade reads the anomaly model's view of the frame; "
                              "grade whole frames with Inspector.grade")
        return self._score(rgb)

    def grade_judged(self, rgb: np.ndarray, patches: np.ndarray, distances: np.ndarray, grid: tuple[int, int]) -> float:
        """Grade from what judging the frame already computed: its patch embeddings and their
        distances in units of the threshold (no second run of the anomaly model)."""
        if self.prepare.source == "embedding":
            return self.grade_patches(patches, distances)
        if self.prepare.source == "anomaly":
            return self.grade_map(distances.reshape(grid))
        return self._score(rgb)

    def grade_patches(self, patches: np.ndarray, distances: np.ndarray) -> float:
        """Grade from patch embeddings and distances (threshold units) the station already computed."""
        return float(self._run(self.prepare.from_embedding(patches, distances))[0])

    def grade_map(self, distances: np.ndarray) -> float:
        """Grade from a patch-distance map the station already computed (anomaly-map grades only)."""
        return float(self._run(self.prepare.from_map(distances))[0])

    def percentile(self, grade: float) -> float:
        """Share (0–1) of the images it was trained on that grade below ``grade``."""
        ref = self.ranker.reference_scores
        return float(np.searchsorted(ref, grade, side="right") / len(ref)) if ref else float("nan")


class BestFrame:
    """The best frame of a burst so far by the gate: the highest quality, the first of equals.

    :func:`best_of` chooses with it from frames in hand; the station offers each frame of a burst
    as the camera delivers it, so that it keeps only what the chosen frame needs (its full-size
    image is copied when it becomes the best, never for the others).
    """

    def __init__(self) -> None:
        self.index = -1  # none offered yet
        self.quality = -math.inf
        self.reason = ""

    def offer(self, index: int, assessed: tuple[float, str]) -> bool:
        """Frame ``index`` with its (quality, limiting family); True when it is the best so far."""
        quality, reason = assessed
        if self.index >= 0 and not quality > self.quality:  # equal: the earlier frame stays
            return False
        self.index, self.quality, self.reason = index, quality, reason
        return True


def best_of(gate: QualityGate, frames: Sequence[np.ndarray], bits: int | None = None) -> tuple[int, float]:
    """Burst capture: index and quality of the best of ``frames`` (the first of equals)."""
    if not frames:
        raise KenpinError("best_of: no frames to choose from; capture at least one")
    best = BestFrame()
    for i, f in enumerate(frames):
        best.offer(i, gate.assess(f, bits))
    return best.index, best.quality
