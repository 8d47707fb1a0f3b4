"""ONNX Runtime on the station's CPU: how a model's session is set up, and how it is called.

Every model kenpin ships (the embedder, the rankers) has one input and one output. :class:`OnnxModel`
is the one place that asks a session for their names, so a caller only passes an array in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from device.errors import BundleError


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


class OnnxModel:
    """A one-input, one-output ONNX model in a station-style session: ``model(x)`` is its output."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self.input_name: str = self.session.get_inputs()[0].name
        self.output_name: str = self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for one input array (its batch dimension included)."""
        return self.session.run([self.output_name], {self.input_name: x})[0]
