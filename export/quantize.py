"""int8 static quantization with onnxruntime's own tools, calibrated on good images."""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime.quantization
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.onnx_export import INPUT_NAME

log = logging.getLogger(__name__)
_ORT_QUANTIZATION = str(Path(onnxruntime.quantization.__file__).parent)


class _QuantizerNotesToDebug(logging.Filter):
    """Re-logs onnxruntime's quantizer notes at DEBUG on this module's logger.

    The quantizer writes its notes with the module-level ``logging.info``, i.e. on the root
    logger, so a filter on the root logger itself is the one place that catches them. A real
    bundle gets ~190 "Increased scale[i] for weight …" notes, which a console at INFO
    (``kenpin train``, ``scripts/demo.sh``) would print between the progress bars; ``kenpin -v``
    still shows them. The quantizer's warnings and errors pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not record.pathname.startswith(_ORT_QUANTIZATION):
            return True
        log.debug("onnxruntime: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _quantizer_notes_at_debug() -> Iterator[None]:
    """While quantizing: onnxruntime's INFO notes go to DEBUG (see _QuantizerNotesToDebug)."""
    notes = _QuantizerNotesToDebug()
    root = logging.getLogger()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)


class ArrayReader(CalibrationDataReader):
    """Feeds preprocessed good images (Nx3xHxW) to the calibrator one at a time; ``set_range``
    limits it to a slice (onnxruntime's strided calibration, ``CalibStridedMinMax``)."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._inputs = inputs
        self._i, self._end = 0, len(inputs)
        self.fed = 0  # images handed to the calibrator, over all slices
        self.slices = 0

    def __len__(self) -> int:
        return len(self._inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self._inputs))
        self.slices += 1

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        x = self._inputs[self._i : self._i + 1]
        self._i += 1
        self.fed += 1
        return {INPUT_NAME: x}

    def rewind(self) -> None:
        self._i, self._end = 0, len(self._inputs)


# onnxruntime's calibrators keep every calibration image's intermediate tensors until they
# compute ranges or histograms: at 384x384, 64 images took ~14 GB and a 24 GB machine killed the
# export. Above this many bytes of stored tensors, calibration runs in slices whose histograms
# (or ranges) are merged, onnxruntime's own strided calibration.
CALIB_MEMORY_BYTES = 2 * 1024**3


def activation_bytes(model: Path) -> int:
    """Bytes of float tensors one image produces in a shape-inferred model (what a calibrator keeps)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    total = 0
    for vi in [*graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        total += 4 * int(np.prod(dims))
    return total


def calibration_stride(n_images: int, per_image: int, budget: int | None = None) -> int | None:
    """Images per calibration slice (a divisor of ``n_images``, as onnxruntime requires), or None
    when all of them fit in ``budget`` (default CALIB_MEMORY_BYTES) at once."""
    budget = CALIB_MEMORY_BYTES if budget is None else budget
    if n_images * per_image <= budget:
        return None
    most = max(1, budget // max(per_image, 1))
    return max(d for d in range(1, n_images + 1) if n_images % d == 0 and d <= most)


def leading_convs(model: Path, n: int) -> list[str]:
    """Names of the first ``n`` Conv nodes (ONNX graphs are stored in topological order)."""
    import onnx

    return [node.name for node in onnx.load(str(model)).graph.node if node.op_type == "Conv"][:n]


def quantize_int8(fp32_model: Path, out_path: Path, calib_inputs: np.ndarray, method: str,
                  fp32_convs: int = 0, *, reduce_range: bool = True, op_types: list[str] | None = None,
                  minmax_moving_average: bool = True) -> None:
    """Static QDQ int8 (per-channel signed weights, unsigned activations) calibrated with ``method``.

    The first ``fp32_convs`` convolutions stay in fp32; ``op_types`` limits what is quantized
    (default: every operator onnxruntime can). ``reduce_range`` stores 7-bit weights. Which of
    8-bit and 7-bit weights judges closer to fp32 depends on the CPU's int8 kernels (AVX2 without
    VNNI saturates 8-bit products; VNNI and Arm dot-product kernels lose precision with 7 bits), so
    a bundle ships both and the station checks them on its own CPU (``device/selfcheck.py``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # Shape inference and graph fusion first, as onnxruntime's docs recommend for static int8.
        quant_pre_process(str(fp32_model), str(prepped), skip_symbolic_shape=True)
        extra: dict[str, object] = {"CalibMovingAverage": True} if method == "MinMax" and minmax_moving_average else {}
        stride = calibration_stride(len(calib_inputs), activation_bytes(prepped))
        if stride is not None:
            log.debug("int8 calibration in slices of %d of %d images (keeps the calibrator's memory under %.0f GB)",
                     stride, len(calib_inputs), CALIB_MEMORY_BYTES / 1024**3)
            extra["CalibStridedMinMax"] = stride
        # The histogram calibrators print their progress to stdout and the quantizer logs a note
        # per rescaled weight channel; keep the user's console readable.
        with contextlib.redirect_stdout(io.StringIO()), _quantizer_notes_at_debug():
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
                extra_options=extra or None,
            )
