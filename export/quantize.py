"""int8 static quantization with onnxruntime's own tools, calibrated on good images."""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.onnx_export import INPUT_NAME


class ArrayReader(CalibrationDataReader):
    """Feeds preprocessed good images (Nx3xHxW) to the calibrator one at a time."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._inputs = inputs
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._inputs):
            return None
        x = self._inputs[self._i : self._i + 1]
        self._i += 1
        return {INPUT_NAME: x}

    def rewind(self) -> None:
        self._i = 0


def leading_convs(model: Path, n: int) -> list[str]:
    """Names of the first ``n`` Conv nodes (ONNX graphs are stored in topological order)."""
    import onnx

    return [node.name for node in onnx.load(str(model)).graph.node if node.op_type == "Conv"][:n]


def quantize_int8(fp32_model: Path, out_path: Path, calib_inputs: np.ndarray, method: str,
                  fp32_convs: int = 0, *, reduce_range: bool = True, op_types: list[str] | None = None,
                  minmax_moving_average: bool = True) -> None:
    """Static QDQ int8 (per-channel signed weights, unsigned activations) calibrated with ``method``.

    The first ``fp32_convs`` convolutions stay in fp32; ``op_types`` limits what is quantized
    (default: every operator onnxruntime can). ``reduce_range`` stores 7-bit weights: on x86 CPUs
    without VNNI (AVX2 only) onnxruntime's 8-bit kernels saturate their 16-bit sums, which cost
    the tiny test line's int8-vs-fp32 rank agreement 0.916 against 0.993 with 7-bit weights
    (``scripts/int8_range_probe.py``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # Shape inference and graph fusion first, as onnxruntime's docs recommend for static int8.
        quant_pre_process(str(fp32_model), str(prepped), skip_symbolic_shape=True)
        # The histogram calibrators print their progress to stdout; keep the user's console readable.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepped),
                str(out_path),
                ArrayReader(calib_inputs),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[method],
                nodes_to_exclude=leading_convs(prepped, fp32_convs),
                extra_options={"CalibMovingAverage": True} if method == "MinMax" and minmax_moving_average else None,
            )
