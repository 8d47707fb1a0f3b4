"""The reference-bank search as an ONNX Runtime graph (a bundle's ``search_<variant>.onnx``).

``scoring.search: int8`` bundles carry, per int8 variant, the station's search formula with the
bank inside the graph — patches centred on the bank's mean, ``min_j(|b_j|² - 2 x·b_j) + |x|²``,
the product in int8 (onnxruntime's dynamic quantization, per-channel weights) — so the search runs
on the int8 kernels the CNN already uses: on a VNNI CPU about 4x faster than the fp32 GEMM, the full
embedding kept. The export calibrates each variant through its own search graph and records its
probe scores with it, so the station's own check covers the search as it covers the model.
Graphs exported with a texture model also return its Mahalanobis distance (output ``texture``):
the texture statistics of the same patches in the same call, cheaper than numpy's float64 ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from device.scoring import BankSearch, NearestNeighbourScorer


DISTANCES, TEXTURE = "distances", "texture"  # the graph's outputs (the second optional)


class GraphSearch:
    """Nearest-reference distances from a search graph: patches (PxC float32) → distances (P)."""

    def __init__(self, path: Path, dim: int, size: int, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self.scores_texture = [o.name for o in self.session.get_outputs()] == [DISTANCES, TEXTURE]
        self.dim = dim
        self.size = size

    def _run(self, patches: np.ndarray) -> list[np.ndarray]:
        if patches.shape[1] != self.dim:
            raise ValueError(f"patch dimension {patches.shape[1]} does not match the bank's {self.dim}")
        return self.session.run(None, {self._input: np.ascontiguousarray(patches, dtype=np.float32)})

    def distances(self, patches: np.ndarray) -> np.ndarray:
        """Nearest-reference distance for each row of ``patches`` (PxC) → P float32."""
        return self._run(patches)[0]

    def search(self, patches: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(per-patch distances, the texture distance where the graph computes it, else None)."""
        out = self._run(patches)
        return out[0], float(out[1]) if self.scores_texture else None


def bank_search(bank: Path, search: Path | None) -> BankSearch:
    """A variant's search: its graph where the bundle has one, else the fp32 GEMM over its bank."""
    if search is None:
        return NearestNeighbourScorer(np.load(bank))
    size, dim = np.load(bank, mmap_mode="r").shape  # the graph holds the bank: only its shape is read here
    return GraphSearch(search, dim, size)
