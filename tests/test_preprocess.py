"""The preprocessing contract: the resize a bundle records is the resize the station runs."""
import cv2
import numpy as np
import pytest
from skimage.data import chelsea

from device.errors import KenpinError
from device.preprocess import Preprocess


def _wide_frame() -> np.ndarray:
    # A real photo stretched to the ball_screw frame size (1130x460).
    return cv2.resize(chelsea(), (1130, 460), interpolation=cv2.INTER_CUBIC)


def test_area_halving_matches_a_one_step_area_resize_to_within_a_grey_level():
    frame = _wide_frame()
    one = Preprocess(448, 192).resize(frame).astype(np.float32)
    halved = Preprocess(448, 192, interpolation="area-halving").resize(frame).astype(np.float32)
    assert halved.shape == one.shape == (192, 448, 3)
    assert np.abs(one - halved).mean() < 1.0


def test_area_halving_on_a_frame_smaller_than_twice_the_input_is_plain_area():
    frame = _wide_frame()[:300, :800]
    a = Preprocess(448, 192).resize(frame)
    b = Preprocess(448, 192, interpolation="area-halving").resize(frame)
    assert np.array_equal(a, b)


def test_the_bundle_form_keeps_the_interpolation():
    pre = Preprocess(448, 192, interpolation="area-halving")
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_an_unknown_interpolation_is_refused_naming_the_key():
    with pytest.raises(KenpinError, match=r"preprocess.interpolation = 'bicubic'.*area-halving"):
        Preprocess(224, 224, interpolation="bicubic")
