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


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_the_larger_backbones_load_their_packaged_weights_and_see_a_cat(name):
    from training.backbone import block_table, load_imagenet

    model = load_imagenet(name)  # strict: the block table matches the packaged weights
    assert len(model._blocks) == len(block_table(name)) == 21
    x = torch.from_numpy(Preprocess(256, 256)(skdata.chelsea()))  # near their native 240 / 260 px
    with torch.inference_mode():
        assert int(model(x).argmax()) in CATS


def test_a_lite2_embedder_uses_its_own_block_table():
    from training.features import FeatureSpec, PatchEmbedder

    spec = FeatureSpec(blocks=(14, 19), backbone="lite2")
    assert spec.dim == 120 + 208 and spec.stride == 16
    with torch.inference_mode():
        out = PatchEmbedder(spec)(torch.zeros(1, 3, 128, 96))
    assert out.shape == (1, 328, 8, 6)


def test_a_block_the_backbone_lacks_is_named():
    from device.errors import KenpinError
    from training.features import FeatureSpec

    with pytest.raises(KenpinError, match=r"features.blocks = \[14, 21\]: .*0–20 of lite1"):
        FeatureSpec(blocks=(14, 21), backbone="lite1")
    with pytest.raises(KenpinError, match="features.backbone = 'lite9'"):
        FeatureSpec(backbone="lite9")
