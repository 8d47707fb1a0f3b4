"""Real production photos from ../shared/datasets (skipped where absent) and the full demo.

Fast-ish real-data checks run with ``-m realdata``; the full-size figures (minutes each) also
carry ``slow``. The figures asserted are the issue's targets; BENCHMARKS.md has the measured ones.
"""
import json

import numpy as np
import pytest

from device.images import read_rgb
from device.runtime import Inspector
from device.scoring import NearestNeighbourScorer
from tests.conftest import dataset, tiny_recipe
from training.dataset import scan_mvtec
from training.features import PatchEmbedder
from training.fit import image_scores, torch_embed_fn

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["magnetic_tile", "ball_screw"])
def test_station_scores_real_photos_exactly_as_training_does(name, tiny_bundle):
    """Gray tiles of odd sizes and wide colour frames go through the same preprocessing both sides."""
    ds = scan_mvtec(dataset(name), need_test=True)
    station = Inspector.open(tiny_bundle, "fp32")
    model = PatchEmbedder(tiny_recipe().features).eval()
    scorer = NearestNeighbourScorer(np.load(tiny_bundle / "bank_fp32.npy"))
    for t in ds.test[:: max(1, len(ds.test) // 6)]:
        rgb = read_rgb(t.path)
        train_side = image_scores(scorer, torch_embed_fn(model)(station.preprocess(rgb)))[0]
        assert abs(station.inspect(rgb).raw_score - train_side) <= 1e-4 * abs(train_side), t.path


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name,recipe,target", [
    ("magnetic_tile", "recipe_tile.yaml", 0.97),
    ("ball_screw", "recipe_wide.yaml", 0.93),
])
def test_int8_bundle_reaches_the_issue_figure(name, recipe, target, tmp_path):
    from export.build import build_bundle
    from training.evaluate import metrics, score_test_set
    from training.recipe import load_recipe

    data = dataset(name)
    build_bundle(data, tmp_path / "b", load_recipe(REPO / "configs" / recipe))
    m8 = metrics(score_test_set(Inspector.open(tmp_path / "b", "int8"), data))
    m32 = metrics(score_test_set(Inspector.open(tmp_path / "b", "fp32"), data))
    assert m8["image_auroc"] >= target
    assert abs(m8["image_auroc"] - m32["image_auroc"]) <= 0.005


@pytest.mark.slow
def test_the_demo_inspects_its_line_with_auroc_099(tmp_path, capsys):
    from kenpin.cli import main

    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "eval.json").read_text())
    assert m["image_auroc"] >= 0.99
    assert "verdicts:" in out and "report:" in out and (tmp_path / "report" / "roc.png").is_file()
