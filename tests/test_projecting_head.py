"""A metric head that projects to fewer dimensions (``metric.head.out_dim``): it starts as the PCA
of good patches, trains, and its bundle's bank, threshold and station search live in its space."""
from __future__ import annotations

import json

import numpy as np
import torch

from tests.conftest import tiny_recipe
from test_metric_training import assert_the_station_scores_as_training, metric_recipe
from training.features import PatchEmbedder
from training.fit import flatten_patches
from training.metric.model import HeadSpec, TrainedEmbedder, init_projection, load_embedder
from training.reduction import fit_reduction


def test_before_training_the_projecting_head_outputs_the_pca_of_good_patches():
    features = tiny_recipe().features
    x = torch.rand(3, 3, 128, 128)
    with torch.inference_mode():
        maps = PatchEmbedder(features).eval()(x).numpy()
    model = TrainedEmbedder(features, HeadSpec(out_dim=12)).eval()
    init_projection(model, flatten_patches(maps), seed=0)
    model.scale.fill_(5.0)
    with torch.inference_mode():
        out = model(x).numpy() * 5.0
    pca = fit_reduction(flatten_patches(maps), 12, whiten=False, seed=0).apply(maps)
    assert out.shape == (3, 12, 8, 8)
    assert np.allclose(out, pca, atol=1e-4 * np.abs(pca).max())


def test_a_projecting_head_trains_and_its_bundle_scores_in_its_space_at_the_station(tiny_line, tmp_path):
    from export.build import build_bundle
    from training.metric.train import train_embedding

    recipe = metric_recipe(steps=6, out_dim=16)
    summary = train_embedding(tiny_line, tmp_path / "run", recipe)
    w = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)["model"]["project.weight"].view(16, -1)
    assert summary["steps"] == 6 and w.shape == (16, 304)
    assert not torch.allclose(w @ w.T, torch.eye(16), atol=1e-4)  # trained away from its PCA start (orthonormal rows)
    body = build_bundle(tiny_line, tmp_path / "b", recipe, tmp_path / "run" / "embedder.pt")
    assert "projection to 16 dimensions" in body["backbone"]
    assert np.load(tmp_path / "b" / "bank_fp32.npy").shape[1] == 16  # the bank lives in the projected space
    model, _ = load_embedder(tmp_path / "run" / "embedder.pt", recipe.features, recipe.metric.head)
    assert_the_station_scores_as_training(tmp_path / "b", model, tiny_line)  # the parity the bundle's gate holds


def test_out_dim_at_or_above_the_embedding_names_the_key_and_the_limit(tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    (tmp_path / "r.yaml").write_text("metric:\n  head:\n    out_dim: 304\n")
    code = main(["train-embedding", "--data", str(tiny_line), "--out", str(tmp_path / "run"),
                 "--recipe", str(tmp_path / "r.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "metric.head.out_dim" in err and "304" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_projecting_embedder_with_a_recipe_without_the_projection_is_refused_by_name(tiny_line, tmp_path, capsys):
    from kenpin.cli import main
    from training.metric.model import save_embedder

    recipe = metric_recipe(out_dim=8)
    model = TrainedEmbedder(recipe.features, recipe.metric.head)
    save_embedder(tmp_path / "embedder.pt", model, recipe.to_dict(), {"step": 0})
    (tmp_path / "r.yaml").write_text(json.dumps({"preprocess": {"width": 128, "height": 128}}))
    code = main(["train", "--data", str(tiny_line), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "r.yaml"),
                 "--embedder", str(tmp_path / "embedder.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "metric.head.out_dim = 8" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
