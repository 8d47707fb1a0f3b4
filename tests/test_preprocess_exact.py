"""The model's input is the contract's arithmetic, bit for bit, on every CPU: a station whose
preprocessing rounds differently from the exporting machine's fails its own fp32 check."""
import cv2
import numpy as np
import pytest

from device.preprocess import Preprocess


def contract(pp: Preprocess, rgb: np.ndarray) -> np.ndarray:
    """(x/255 - mean) / std per channel, in numpy float32 (exactly rounded, the same everywhere)."""
    x = np.stack(cv2.split(pp.resize(rgb))).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(pp.mean, dtype=np.float32).reshape(3, 1, 1)
    x *= np.asarray([1.0 / s for s in pp.std], dtype=np.float32).reshape(3, 1, 1)
    return x[None]


@pytest.mark.parametrize("pp", [Preprocess(128, 128), Preprocess(448, 192, mean=(0.485, 0.456, 0.406),
                                                                std=(0.229, 0.224, 0.225), interpolation="area-halving")])
def test_the_input_tensor_equals_the_contract_bit_for_bit(pp):
    rgb = np.random.default_rng(0).integers(0, 256, (460, 1130, 3), dtype=np.uint8)
    rgb[0, :256, 0] = np.arange(256)  # every level at least once in one channel
    x = pp(rgb)
    assert x.shape == (1, 3, pp.height, pp.width) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x, contract(pp, rgb))
