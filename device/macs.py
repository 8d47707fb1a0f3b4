"""Multiply-accumulates of an ONNX model: the size of the work, for estimates on other hardware.

Counting reads the graph with the ``onnx`` package, which the export side has and the station
need not: the export records the count in the bundle's manifest (``model_gmacs``) so a Pi can
estimate without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Published reference points (DESIGN.md) and the MACs of the networks they time.
PI_REFERENCES = {
    "Raspberry Pi 4": {"model": "MobileNetV2 1.0 224 int8 (PyTorch qnnpack)", "ms": 26.0, "gmacs": 0.300},
    "Raspberry Pi 5": {"model": "EfficientNet-B0 224 fp32 (ncnn)", "ms": 12.0, "gmacs": 0.390},
}


def pi_model_ms(gmacs: float, board: str) -> float:
    """An ESTIMATE of one model run on ``board``: the MACs at the board's published rate."""
    ref = PI_REFERENCES[board]
    return gmacs * ref["ms"] / ref["gmacs"]


def model_gmacs(model: Path) -> float | None:
    """GMACs of one run (batch 1) of a model's Conv nodes; None without ``onnx`` or convolutions."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    m = shape_inference.infer_shapes(onnx.load(str(model)))
    # A symbolic (batch) dimension reads 0: count it as one frame.
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    macs = 0
    for node in m.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in inits:
            out = shapes[node.output[0]]
            w = inits[node.input[1]]  # (Cout, Cin/groups, kh, kw)
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return macs / 1e9 if macs else None
