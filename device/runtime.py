"""The station's inspection path: frame → preprocess → ONNX Runtime → nearest-reference score."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from device.bundle import Bundle, Variant, load_bundle
from device.errors import BundleError
from device.scoring import NORMALIZED_THRESHOLD, ImageScorer, NearestNeighbourScorer, heatmap, patches_from_map


@dataclass(frozen=True)
class Verdict:
    """One inspected part. ``score`` is normalized (0–1, threshold at 0.5); raw values kept for audit."""

    verdict: str
    score: float
    threshold: float
    raw_score: float
    raw_threshold: float
    latency_ms: float
    heatmap: np.ndarray | None = None


def make_session(model: Path, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session pinned to ``threads`` intra-op threads (the Pi has 4 cores)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's workers busy-wait after each run by default; on a small CPU they then fight the BLAS
    # threads of the reference search that follows (measured: embed + search 24-32 ms vs 13 ms).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own hierarchy; the message is what matters
        raise BundleError(f"{model}: ONNX Runtime cannot load this model ({e})") from None


class Inspector:
    """Judges frames with one precision of a verified bundle."""

    def __init__(self, bundle: Bundle, precision: str = "int8", threads: int = 2) -> None:
        self.bundle = bundle
        self.variant: Variant = bundle.variant(precision)
        self.preprocess = bundle.preprocess
        self.session = make_session(self.variant.model, threads)
        self._input = self.session.get_inputs()[0].name
        self.scorer = NearestNeighbourScorer(np.load(self.variant.bank))
        self.image_scorer = ImageScorer(self.scorer, self.variant.texture, self.variant.fusion)
        self._check_output_shape()

    @classmethod
    def open(cls, root: str | Path, precision: str = "int8", threads: int = 2) -> "Inspector":
        """Verify and load a bundle directory."""
        return cls(load_bundle(root), precision, threads)

    def _check_output_shape(self) -> None:
        probe = np.zeros((1, 3, self.preprocess.height, self.preprocess.width), np.float32)
        out = self.session.run(None, {self._input: probe})[0]
        expected = (1, self.variant.dim, *self.variant.grid)
        if out.shape != expected:
            raise BundleError(f"{self.variant.model}: output shape {out.shape} does not match the manifest's {expected}")

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Patch embeddings of a frame, (h*w) x C."""
        return patches_from_map(self.session.run(None, {self._input: self.preprocess(rgb)})[0])

    def inspect(self, rgb: np.ndarray, with_heatmap: bool = False) -> Verdict:
        """Judge one HxWx3 uint8 RGB frame."""
        t0 = time.perf_counter()
        return self.judge(self.embed(rgb), (rgb.shape[1], rgb.shape[0]), with_heatmap, t0)

    def judge(self, patches: np.ndarray, frame_size: tuple[int, int], with_heatmap: bool = False,
              t0: float | None = None) -> Verdict:
        """Verdict from a frame's patch embeddings; ``frame_size`` (width, height) sizes the heat map."""
        t0 = time.perf_counter() if t0 is None else t0
        raw, scores = self.image_scorer.score(patches)
        norm = self.variant.normalization
        score = float(norm(raw))
        hm = heatmap(scores, self.variant.grid, frame_size, self.bundle.heatmap_sigma) if with_heatmap else None
        latency = (time.perf_counter() - t0) * 1000.0
        verdict = "defect" if score > NORMALIZED_THRESHOLD else "ok"
        return Verdict(verdict, score, NORMALIZED_THRESHOLD, raw, norm.threshold, latency, hm)
