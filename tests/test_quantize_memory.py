"""int8 calibration keeps its memory bounded: onnxruntime's calibrators hold every image's
intermediate tensors, so large inputs are calibrated in slices (it killed a 384 px export)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from device.images import list_images, read_rgb
from export import quantize
from export.quantize import ArrayReader, calibration_stride, quantize_int8


def test_the_slice_divides_the_images_and_fits_the_budget():
    assert calibration_stride(64, 10, budget=1000) is None  # all fit: one pass, as before
    assert calibration_stride(64, 150, budget=1000) == 4  # 6 would fit, 4 divides 64
    assert calibration_stride(7, 150, budget=1000) == 1  # a prime count: one at a time
    assert calibration_stride(64, 5000, budget=1000) == 1  # one image over budget: still runs


@pytest.mark.parametrize("method", ["MinMax", "Entropy"])
def test_sliced_calibration_sees_every_image_once_and_quantizes_alike(tiny_bundle, tiny_line, tmp_path, monkeypatch,
                                                                     method):
    from tests.conftest import tiny_recipe

    pre = tiny_recipe().preprocess
    x = np.concatenate([pre(read_rgb(p)) for p in list_images(tiny_line / "train" / "good")[:8]])
    fp32 = tiny_bundle / "embedder_fp32.onnx"
    fed = []
    real_reader = ArrayReader

    def counting_reader(inputs):
        r = real_reader(inputs)
        fed.append(r)
        return r

    monkeypatch.setattr(quantize, "ArrayReader", counting_reader)
    quantize_int8(fp32, tmp_path / "whole.onnx", x, method, 3)
    monkeypatch.setattr(quantize, "CALIB_MEMORY_BYTES", 1)  # force one image per slice
    quantize_int8(fp32, tmp_path / "sliced.onnx", x, method, 3)
    assert [r.fed for r in fed] == [8, 8] and [r.slices for r in fed] == [0, 8]

    def run(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x[:2]})[0]

    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    want = ref.run(None, {ref.get_inputs()[0].name: x[:2]})[0]
    err = {k: np.linalg.norm(run(tmp_path / f"{k}.onnx") - want) / np.linalg.norm(want) for k in ("whole", "sliced")}
    assert err["sliced"] < max(2 * err["whole"], 0.05), err
