"""Train and serve cannot drift: the station's score equals the training side's for the same image."""
import numpy as np

from device.images import list_images, read_rgb
from device.runtime import Inspector
from device.scoring import ImageScorer, NearestNeighbourScorer, patches_from_map
from tests.conftest import tiny_recipe
from training.features import PatchEmbedder
from training.fit import image_scores, torch_embed_fn


def test_station_fp32_score_matches_the_pytorch_checkpoint(tiny_bundle, tiny_line):
    station = Inspector.open(tiny_bundle, "fp32")
    model = PatchEmbedder(tiny_recipe().features).eval()
    scorer = NearestNeighbourScorer(np.load(tiny_bundle / "bank_fp32.npy"))
    paths = list_images(tiny_line / "test" / "good")[:3] + list_images(tiny_line / "test" / "scratch")[:2]
    for p in paths:
        rgb = read_rgb(p)
        train_side = image_scores(scorer, torch_embed_fn(model)(station.preprocess(rgb)))[0]
        assert abs(station.inspect(rgb).raw_score - train_side) <= 1e-4 * abs(train_side)


def test_with_a_texture_model_the_station_still_scores_as_training_does(tiny_texture_bundle, tiny_line):
    station = Inspector.open(tiny_texture_bundle, "fp32")
    v = station.variant
    assert v.texture is not None and v.fusion is not None
    scorer = ImageScorer(NearestNeighbourScorer(np.load(v.bank)), v.texture, v.fusion)
    model = PatchEmbedder(tiny_recipe().features).eval()
    for p in list_images(tiny_line / "test" / "good")[:2] + list_images(tiny_line / "test" / "crack")[:2]:
        rgb = read_rgb(p)
        station_parts = scorer.parts(station.embed(rgb))[:2]
        train_parts = scorer.parts(patches_from_map(torch_embed_fn(model)(station.preprocess(rgb))))[:2]
        # Both distances agree within 1e-4 relative ...
        np.testing.assert_allclose(station_parts, train_parts, rtol=1e-4)
        # ... and so does the fused score, up to its standardization (z = (d - mean) / std).
        tol = 1e-4 * max(train_parts[0] / v.fusion.patch_std, train_parts[1] / v.fusion.texture_std)
        assert abs(station.inspect(rgb).raw_score - scorer.score(patches_from_map(
            torch_embed_fn(model)(station.preprocess(rgb))))[0]) <= tol


def test_a_texture_bundle_needs_a_runtime_that_knows_texture(tiny_texture_bundle, tiny_bundle):
    import json

    from device.bundle import schema_version_for

    m = json.loads((tiny_texture_bundle / "manifest.json").read_text())
    body = {k: v for k, v in m.items() if k != "probes"}
    assert schema_version_for(body) == 2  # texture alone needs schema 2 ...
    assert m["schema_version"] == 3  # ... and the probe set 3
