"""Probe: the bank search as an int8 ONNX Runtime graph, against the station's fp32 GEMM.

    .venv/bin/python scripts/search_int8_probe.py --bundle B --data DATASET_DIR

Not a station feature (yet): it measures whether searching in int8 would keep the full embedding's
scores while costing what a reduced embedding's search costs (issue 20). The graph is the
station's formula, ``min_j(|b_j|² - 2 x·b_j) + |x|²``, as MatMul + Add + ReduceMin with the bank
as a constant, quantized by onnxruntime's own dynamic quantization (int8 weights, activations
quantized per call). Variants: the bank and the patches centred on the bank's mean first (the
distances do not change; the norms the int8 product has to carry shrink), and per-channel weights.
Prints ms per frame on one thread, how far each variant's distances and image scores (worst
patch) are from the fp32 search's, and the bundle's image AUROC on every test image with each search
(the bundle's own image score, texture fusion included): a comparison, nothing is chosen on it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from device.images import list_images, read_rgb
from device.runtime import Inspector
from device.scoring import ImageScorer, NearestNeighbourScorer


def search_graph(bank: np.ndarray, path: Path) -> None:
    """``patches (Px C) → min_j(|b_j|² - 2 x·b_j)`` as an fp32 ONNX graph with the bank as constants."""
    consts = [numpy_helper.from_array(np.ascontiguousarray(-2.0 * bank.T, np.float32), "m2t"),
              numpy_helper.from_array(np.einsum("ij,ij->i", bank, bank).astype(np.float32), "sq"),
              numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("MatMul", ["x", "m2t"], ["xb"]), helper.make_node("Add", ["xb", "sq"], ["d2"]),
             helper.make_node("ReduceMin", ["d2", "axis"], ["nearest"], keepdims=0)]
    graph = helper.make_graph(nodes, "bank_search", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, bank.shape[1]])],
                              [helper.make_tensor_value_info("nearest", TensorProto.FLOAT, [None])], consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def int8_search(bank: np.ndarray, work: Path, centre: bool, per_channel: bool):
    """The bank search quantized to int8; returns patches → nearest distances."""
    mu = bank.mean(axis=0) if centre else np.zeros(bank.shape[1], np.float32)
    fp32, q = work / f"s{centre}{per_channel}.onnx", work / f"s{centre}{per_channel}_int8.onnx"
    search_graph(np.ascontiguousarray(bank - mu, np.float32), fp32)
    quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, per_channel=per_channel)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(q), opts, providers=["CPUExecutionProvider"])

    def distances(patches: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(patches - mu, np.float32)
        return np.sqrt(np.maximum(session.run(None, {"x": x})[0] + np.einsum("ij,ij->i", x, x), 0.0))
    return distances


class _Search:
    """Stands in for ``NearestNeighbourScorer`` inside ``ImageScorer``: only ``distances`` is read."""

    def __init__(self, distances) -> None:
        self.distances = distances


def test_auroc(insp: Inspector, search, every: list[np.ndarray], defective: np.ndarray) -> float:
    """The bundle's image AUROC on ``every`` test image's patches with ``search`` as its bank search."""
    v = insp.variant
    scorer = ImageScorer(_Search(search), v.texture, v.fusion)
    return float(roc_auc_score(defective, [scorer.score(p)[0] for p in every]))


def best_ms(fn, patches: list[np.ndarray], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for p in patches:
            fn(p)
        times.append((time.perf_counter() - t0) / len(patches) * 1000.0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True, help="MVTec-layout dataset; every 5th test image gives patches")
    args = ap.parse_args()
    insp = Inspector.open(args.bundle, "int8", threads=1)
    paths = [p for d in sorted((Path(args.data) / "test").iterdir()) if d.is_dir() for p in list_images(d)]
    every = [insp.embed(read_rgb(p)) for p in paths]
    defective = np.array([p.parent.name != "good" for p in paths])
    patches = every[::5][:80]
    bank = np.load(insp.variant.bank).astype(np.float32)
    reference = NearestNeighbourScorer(bank).distances
    ref = [reference(p) for p in patches]
    print(f"{len(patches)} frames x {patches[0].shape[0]} patches x {bank.shape[1]} dims, bank {len(bank)} rows, one thread")
    print(f"{'station fp32 GEMM':32s} {best_ms(reference, patches):6.2f} ms"
          f"{'':40s}test AUROC {test_auroc(insp, reference, every, defective):.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        for centre in (False, True):
            for per_channel in (False, True):
                fn = int8_search(bank, Path(tmp), centre, per_channel)
                got = [fn(p) for p in patches]
                rel = np.mean([np.abs(g - r).mean() / r.mean() for g, r in zip(got, ref)])
                rho = spearmanr([g.max() for g in got], [r.max() for r in ref])[0]
                name = f"int8{' centred' if centre else ''}{' per-channel' if per_channel else ''}"
                print(f"{name:32s} {best_ms(fn, patches):6.2f} ms   mean |Δd|/d {rel:.1e}   worst-patch score ρ {rho:.4f}"
                      f"   test AUROC {test_auroc(insp, fn, every, defective):.4f}")


if __name__ == "__main__":
    main()
