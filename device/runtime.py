"""The station's inspection path: frame → preprocess → ONNX Runtime → nearest-reference score."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.bundle import Bundle, Variant, load_bundle
from device.errors import BundleError
from device.quality import Grader, QualityGate
from device.graph_search import bank_search
from device.scoring import (NORMALIZED_THRESHOLD, ImageScorer, Normalization, heat_units, heatmap, patch_threshold,
                            patches_from_map)
from device.session import OnnxModel


@dataclass(frozen=True)
class Verdict:
    """One judged part. ``score`` is normalized (0–1, the bundle's threshold at 0.5); raw values kept for audit.

    ``heatmap`` is in the station's units (0 where good parts' patches rarely reach, 1 where one
    patch alone would reject); ``distances`` are the patches' nearest-reference distances.
    """

    verdict: str
    score: float
    threshold: float
    raw_score: float
    raw_threshold: float
    latency_ms: float
    heatmap: np.ndarray | None = None
    quality: float | None = None
    retake_reason: str | None = None
    grade: float | None = None
    distances: np.ndarray | None = None


def distance_unit(variant: Variant) -> np.float32:
    """The patch distance at the bundle's own threshold: rankers read distances in this unit."""
    return np.float32(patch_threshold(variant.normalization.threshold, variant.fusion))


def load_rankers(bundle: Bundle) -> tuple[QualityGate | None, Grader | None]:
    """The bundle's capture-quality gate and grade (RankNet), each None when absent."""
    return QualityGate.from_bundle(bundle, threads=1), Grader.from_bundle(bundle, threads=1)


def raw_threshold_at(norm: Normalization, threshold: float) -> float:
    """The raw score at which the normalized score equals ``threshold`` (the station's may differ from 0.5)."""
    return norm.threshold + norm.scale * math.log(threshold / (1 - threshold))


class Inspector:
    """Judges frames with one variant of a verified bundle: the one judging path of kenpin.

    The station, ``kenpin eval``, the benchmarks and the station's own check all call
    :meth:`judge` (gate → embed → score → verdict → heat map, grade); the station's pipeline only
    splits the embedding off into its own stage (:meth:`run`) and passes the patches in.
    ``rankers``: also load the bundle's capture-quality gate and grade, where it has them.
    """

    def __init__(self, bundle: Bundle, variant: str | Variant = "int8", threads: int = 2, rankers: bool = False) -> None:
        self.bundle = bundle
        self.variant: Variant = variant if isinstance(variant, Variant) else bundle.variant(variant)
        self.preprocess = bundle.preprocess
        self.embedder = OnnxModel(self.variant.model, threads)
        self.scorer = bank_search(self.variant.bank, self.variant.search)
        self.image_scorer = ImageScorer(self.scorer, self.variant.texture, self.variant.fusion)
        self._check_output_shape()
        self.gate, self.grader = load_rankers(bundle) if rankers else (None, None)

    @classmethod
    def open(cls, root: str | Path, variant: str = "int8", threads: int = 2) -> "Inspector":
        """Verify and load a bundle directory."""
        return cls(load_bundle(root), variant, threads)

    def _check_output_shape(self) -> None:
        probe = np.zeros((1, 3, self.preprocess.height, self.preprocess.width), np.float32)
        out = self.embedder(probe)
        expected = (1, self.variant.dim, *self.variant.grid)
        if out.shape != expected:
            raise BundleError(f"{self.variant.model}: output shape {out.shape} does not match the manifest's {expected}")

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Patch embeddings, (h*w) x C, of a preprocessed 1x3xHxW tensor (the model alone)."""
        return patches_from_map(self.embedder(tensor))

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Patch embeddings of a frame, (h*w) x C."""
        return self.run(self.preprocess(rgb))

    def patch_view(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A frame's patch embeddings and their distances to the reference bank in units of the threshold."""
        patches = self.embed(rgb)
        return patches, self.scorer.distances(patches) / distance_unit(self.variant)

    def anomaly_map(self, rgb: np.ndarray) -> np.ndarray:
        """The frame's patch distances to the reference bank on the model's grid, in units of the threshold."""
        return self.patch_view(rgb)[1].reshape(self.variant.grid)

    def grade(self, rgb: np.ndarray, grader: Grader | None = None) -> float:
        """A whole frame's grade by ``grader`` (default: the bundle's, loaded with ``rankers``), with
        the anomaly model run first where the grade reads it; :meth:`Grader.percentile` reads it."""
        grader = self.grader if grader is None else grader
        if grader is None:
            raise BundleError(f"{self.bundle.root}: no grade model loaded; the bundle has none, or open the "
                              "inspector with rankers=True")
        if not grader.reads_anomaly_model:
            return grader.grade(rgb)
        patches, distances = self.patch_view(rgb)
        return grader.grade_judged(rgb, patches, distances, self.variant.grid)

    def inspect(self, rgb: np.ndarray, with_heatmap: bool = False) -> Verdict:
        """Judge one HxWx3 uint8 RGB frame (heat map always or never)."""
        return self.judge(rgb, heat="always" if with_heatmap else "never")

    def judge(self, frame: np.ndarray, patches: np.ndarray | None = None, threshold: float = NORMALIZED_THRESHOLD,
              heat: str = "defect", t0: float | None = None, assessed: tuple[float, str] | None = None) -> Verdict:
        """Gate → embed → score → verdict → heat map (and grade) of one frame against a normalized ``threshold``.

        ``patches``: the frame's embeddings when a pipeline stage already ran the model.
        ``heat``: ``defect`` (a heat map and grade for rejected parts only), ``always`` or ``never``.
        Latency counts from ``t0`` (default: now).
        ``assessed``: the gate's (quality, limiting family) of this frame when the caller already ran
        the gate (the station's capture stage, which chose the frame of a burst by it, or read the
        gate's frame from the sensor's raw stream); the decision below is the same either way.
        """
        t0 = time.perf_counter() if t0 is None else t0
        if self.gate is None:
            quality, limit = None, None
        else:
            quality, limit = assessed if assessed is not None else self.gate.assess(frame)
        patches = self.embed(frame) if patches is None else patches
        raw, distances = self.image_scorer.score(patches)
        norm, v = self.variant.normalization, self.variant
        score = float(norm(raw))
        raw_threshold = raw_threshold_at(norm, threshold)
        z = (float(raw) - raw_threshold) / norm.scale  # the verdict's distance from the threshold
        retake = quality is not None and self.gate.retakes(quality, z)
        verdict = "retake" if retake else "defect" if score > threshold else "ok"
        hm, grade = None, None
        if heat == "always" or heat == "defect" and verdict == "defect":
            h, w = frame.shape[:2]
            hm = heat_units(heatmap(distances, v.grid, (w, h), self.bundle.heatmap_sigma),
                            patch_threshold(raw_threshold, v.fusion), v.heat_floor)
        if verdict == "defect" and self.grader is not None:
            # the grade was trained on distances in units of the bundle's own threshold
            units = distances / distance_unit(v)
            grade = self.grader.percentile(self.grader.grade_judged(frame, patches, units, v.grid))
        latency = (time.perf_counter() - t0) * 1000.0
        return Verdict(verdict, score, threshold, float(raw), float(raw_threshold), latency, hm, quality,
                       limit if retake else None, grade, distances)
