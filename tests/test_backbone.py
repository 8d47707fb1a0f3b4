"""The packaged ImageNet weights and our preprocessing are right: known photos get known classes."""
import numpy as np
import pytest
import torch

from device.preprocess import Preprocess
from training.backbone import load_lite0_imagenet

skdata = pytest.importorskip("skimage.data")

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def classify():
    model = load_lite0_imagenet()
    pre = Preprocess()

    def top1(rgb: np.ndarray) -> int:
        with torch.inference_mode():
            return int(model(torch.from_numpy(pre(rgb))).argmax())

    return top1


def test_chelsea_is_a_cat(classify):
    assert classify(skdata.chelsea()) in CATS


def test_coffee_is_espresso_or_a_cup(classify):
    assert classify(skdata.coffee()) in COFFEE


def test_strict_load_rejects_a_wrong_architecture():
    from training.backbone import EfficientNetLite0

    model = EfficientNetLite0(num_classes=10)
    state = load_lite0_imagenet().state_dict()
    with pytest.raises(RuntimeError):
        model.load_state_dict(state, strict=True)
