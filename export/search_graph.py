"""Writes a variant's bank search as an int8 ONNX graph (``scoring.search: int8``; read by
``device.graph_search``), with onnxruntime's own dynamic quantization."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from device.graph_search import DISTANCES, TEXTURE, GraphSearch
from device.scoring import TextureModel

PATCHES = "patches"
MAHALANOBIS = "texture_mahalanobis"  # the texture's product stays fp32: not worth int8's error


def _fp32_graph(bank: np.ndarray, texture: TextureModel | None) -> onnx.ModelProto:
    """patches → nearest-reference distances: the station's formula, patches and bank centred on the
    bank's mean first (distances unchanged; smaller norms for the int8 product to carry); with
    ``texture``, also its distance of the same patches (:func:`_texture_nodes`)."""
    mu = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = (bank - mu).astype(np.float32)
    consts = [numpy_helper.from_array(mu, "mean"),
              numpy_helper.from_array(np.ascontiguousarray(-2.0 * centred.T), "minus_2_bank_t"),
              numpy_helper.from_array(np.einsum("ij,ij->i", centred, centred), "bank_sq"),
              numpy_helper.from_array(np.array([1], np.int64), "rows"),
              numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    # Mul + ReduceSum: onnxruntime's ReduceSumSquare is ~3x slower here; x² also feeds the texture.
    nodes = [helper.make_node("Sub", [PATCHES, "mean"], ["x"]),
             helper.make_node("Mul", ["x", "x"], ["x2"]),
             helper.make_node("MatMul", ["x", "minus_2_bank_t"], ["xb"]),
             helper.make_node("Add", ["xb", "bank_sq"], ["d2_part"]),
             helper.make_node("ReduceMin", ["d2_part", "rows"], ["nearest_part"], keepdims=0),
             helper.make_node("ReduceSum", ["x2", "rows"], ["x_sq"], keepdims=0),
             helper.make_node("Add", ["nearest_part", "x_sq"], ["d2"]),
             helper.make_node("Max", ["d2", "zero"], ["d2_pos"]),
             helper.make_node("Sqrt", ["d2_pos"], [DISTANCES])]
    outputs = [helper.make_tensor_value_info(DISTANCES, TensorProto.FLOAT, [None])]
    if texture is not None:
        consts += [numpy_helper.from_array(texture.mean.astype(np.float32), "texture_mean"),
                   numpy_helper.from_array(texture.precision.astype(np.float32), "texture_precision"),
                   numpy_helper.from_array(np.array([0], np.int64), "patch_axis")]
        nodes += _texture_nodes()
        outputs.append(helper.make_tensor_value_info(TEXTURE, TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "bank_search",
                              [helper.make_tensor_value_info(PATCHES, TensorProto.FLOAT, [None, bank.shape[1]])],
                              outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _texture_nodes() -> list[onnx.NodeProto]:
    """``device.scoring``'s texture distance from the centred patches ``x`` and their squares:
    per-channel mean (shifted back by the bank's mean) and std over the patches, then the
    Mahalanobis distance. One-pass variance, safe here: ``x`` is centred near zero."""
    return [helper.make_node("ReduceMean", ["x", "patch_axis"], ["t_mean_x"], keepdims=1),
            helper.make_node("ReduceMean", ["x2", "patch_axis"], ["t_mean_x2"], keepdims=1),
            helper.make_node("Mul", ["t_mean_x", "t_mean_x"], ["t_mean_x_sq"]),
            helper.make_node("Sub", ["t_mean_x2", "t_mean_x_sq"], ["t_var"]),
            helper.make_node("Max", ["t_var", "zero"], ["t_var_pos"]),
            helper.make_node("Sqrt", ["t_var_pos"], ["t_std"]),
            helper.make_node("Add", ["t_mean_x", "mean"], ["t_mean"]),
            helper.make_node("Concat", ["t_mean", "t_std"], ["t_desc"], axis=1),
            helper.make_node("Sub", ["t_desc", "texture_mean"], ["t_diff"]),
            helper.make_node("MatMul", ["t_diff", "texture_precision"], ["t_diff_p"], name=MAHALANOBIS),
            helper.make_node("Mul", ["t_diff_p", "t_diff"], ["t_terms"]),
            helper.make_node("ReduceSum", ["t_terms"], ["t_quad"], keepdims=0),
            helper.make_node("Max", ["t_quad", "zero"], ["t_quad_pos"]),
            helper.make_node("Sqrt", ["t_quad_pos"], [TEXTURE])]


def write_int8_search(bank: np.ndarray, path: Path, reduce_range: bool,
                      texture: TextureModel | None = None) -> GraphSearch:
    """Write ``bank``'s search graph to ``path`` with its product in int8 (per-channel weights;
    ``reduce_range``: 7-bit, as the bundle's 7-bit variant), and ``texture``'s distance as a second
    output where given; returns it loaded, one thread."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    model = _fp32_graph(bank, texture)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "search_fp32.onnx"
        onnx.save(model, str(fp32))
        quantize_dynamic(str(fp32), str(path), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=[MAHALANOBIS])
    return GraphSearch(path, bank.shape[1], bank.shape[0])
