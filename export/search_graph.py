"""Writes a variant's bank search as an int8 ONNX graph (``scoring.search: int8``; read by
``device.graph_search``), with onnxruntime's own dynamic quantization."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from device.graph_search import GraphSearch

PATCHES, DISTANCES = "patches", "distances"


def _fp32_graph(bank: np.ndarray) -> onnx.ModelProto:
    """patches → nearest-reference distances: the station's formula, patches and bank centred on the
    bank's mean first (distances unchanged; smaller norms for the int8 product to carry)."""
    mu = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = (bank - mu).astype(np.float32)
    consts = [numpy_helper.from_array(mu, "mean"),
              numpy_helper.from_array(np.ascontiguousarray(-2.0 * centred.T), "minus_2_bank_t"),
              numpy_helper.from_array(np.einsum("ij,ij->i", centred, centred), "bank_sq"),
              numpy_helper.from_array(np.array([1], np.int64), "rows"),
              numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Sub", [PATCHES, "mean"], ["x"]),
             helper.make_node("MatMul", ["x", "minus_2_bank_t"], ["xb"]),
             helper.make_node("Add", ["xb", "bank_sq"], ["d2_part"]),
             helper.make_node("ReduceMin", ["d2_part", "rows"], ["nearest_part"], keepdims=0),
             helper.make_node("ReduceSumSquare", ["x", "rows"], ["x_sq"], keepdims=0),
             helper.make_node("Add", ["nearest_part", "x_sq"], ["d2"]),
             helper.make_node("Max", ["d2", "zero"], ["d2_pos"]),
             helper.make_node("Sqrt", ["d2_pos"], [DISTANCES])]
    graph = helper.make_graph(nodes, "bank_search",
                              [helper.make_tensor_value_info(PATCHES, TensorProto.FLOAT, [None, bank.shape[1]])],
                              [helper.make_tensor_value_info(DISTANCES, TensorProto.FLOAT, [None])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def write_int8_search(bank: np.ndarray, path: Path, reduce_range: bool) -> GraphSearch:
    """Write ``bank``'s search graph to ``path`` with its product in int8 (per-channel weights;
    ``reduce_range``: 7-bit, as the bundle's 7-bit variant); returns it loaded, one thread."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "search_fp32.onnx"
        onnx.save(_fp32_graph(bank), str(fp32))
        quantize_dynamic(str(fp32), str(path), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return GraphSearch(path, bank.shape[1], bank.shape[0])
