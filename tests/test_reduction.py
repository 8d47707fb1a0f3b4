"""A compact embedding: the reduction lives in the model, so training and the station score alike."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from device.bundle import load_bundle
from device.errors import KenpinError
from device.runtime import Inspector
from device.selfcheck import self_check
from training.reduction import ReducedEmbedder, fit_reduction


def test_pca_keeps_the_directions_good_patches_vary_in():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((40, 40)))[0][:, :3]
    x = (rng.standard_normal((5000, 3)) * [5.0, 3.0, 2.0]) @ basis.T + 0.01 * rng.standard_normal((5000, 40)) + 7.0
    red = fit_reduction(x.astype(np.float32), 3, whiten=False, seed=0)
    assert red.explained > 0.999 and np.allclose(red.components @ red.components.T, np.eye(3), atol=1e-4)
    z = red.apply(x.T.reshape(1, 40, 50, 100).astype(np.float32))
    assert np.allclose(z.reshape(3, -1).std(axis=1), [5.0, 3.0, 2.0], rtol=0.05)  # the variances are kept
    white = fit_reduction(x.astype(np.float32), 3, whiten=True, seed=0)
    assert np.allclose(white.apply(x.T.reshape(1, 40, 50, 100).astype(np.float32)).reshape(3, -1).std(axis=1), 1.0,
                       rtol=0.05)


def test_the_appended_convolution_computes_the_reduction():
    base = torch.nn.Conv2d(3, 24, 3, padding=1).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        maps = base(x).numpy()
    red = fit_reduction(maps.transpose(0, 2, 3, 1).reshape(-1, 24), 6, whiten=True, seed=0)
    with torch.no_grad():
        out = ReducedEmbedder(base, red)(x).numpy()
    assert out.shape == (2, 6, 16, 16) and np.allclose(out, red.apply(maps), atol=1e-4)


def test_a_reduction_as_large_as_the_embedding_or_the_patches_is_refused():
    with pytest.raises(KenpinError, match=r"reduction.dim = 24: must be below the embedding's 24"):
        fit_reduction(np.zeros((100, 24), np.float32), 24, False, 0)
    with pytest.raises(KenpinError, match=r"reduction.dim = 8: larger than the 5 bank patches"):
        fit_reduction(np.zeros((5, 24), np.float32), 8, False, 0)


@pytest.fixture(scope="module")
def reduced_bundle(tiny_line, tmp_path_factory):
    from export.build import build_bundle
    from kenpin.bench_inputs import tiny_recipe
    from training.recipe import ReductionSpec

    out = tmp_path_factory.mktemp("reduced") / "b"
    build_bundle(tiny_line, out, replace(tiny_recipe(), reduction=ReductionSpec(dim=32)))
    return out


def test_the_discriminant_keeps_the_direction_defects_move_in_where_pca_drops_it():
    from training.discriminant import PaintedBank, fit_discriminant, residual_moments

    rng = np.random.default_rng(0)
    c, n, h, w = 40, 30, 6, 6
    basis = np.linalg.qr(rng.standard_normal((c, c)))[0]
    good_dirs, defect_dir = basis[:, :3], basis[:, 3]
    # Good patches vary a lot along three directions and barely along the rest.
    coords = rng.standard_normal((n * h * w, 3)) * [5.0, 3.0, 2.0]
    rows = coords @ good_dirs.T + 0.05 * rng.standard_normal((n * h * w, c))
    bank = rows.reshape(n, h, w, c).transpose(0, 3, 1, 2).astype(np.float32)
    sources = np.arange(10)
    painted = bank[sources].copy()
    labels = np.zeros((10, h, w), np.int64)
    labels[:, 2:4, 2:4] = 1
    painted += (labels[:, None] * 1.5 * defect_dir[None, :, None, None]).astype(np.float32)  # small, off-manifold
    red = fit_discriminant(residual_moments(bank, PaintedBank(painted, labels.reshape(-1), sources), 0), 3, 1.0)
    pca = fit_reduction(bank.transpose(0, 2, 3, 1).reshape(-1, c), 3, False, 0)

    def kept(components: np.ndarray) -> float:  # share of the defect direction inside the kept span
        q = np.linalg.qr(components.T.astype(np.float64))[0]
        return float(np.linalg.norm(q.T @ defect_dir))

    assert kept(red.components) > 0.9 and kept(pca.components) < 0.1
    assert red.apply(painted).shape == (10, 3, h, w)
    labels[1:] = 0  # the defect on one image only: 4 patches cannot fit 5 directions
    with pytest.raises(KenpinError, match="the synthetic defects cover only 4 patches"):
        fit_discriminant(residual_moments(bank, PaintedBank(painted, labels.reshape(-1), sources), 0), 5, 1.0)


def test_a_discriminant_bundle_is_fitted_on_painted_bank_images_and_scores_as_trained(tiny_line, tmp_path):
    from export.build import build_bundle
    from kenpin.bench_inputs import tiny_recipe
    from training.recipe import ReductionSpec

    build_bundle(tiny_line, tmp_path / "b", replace(tiny_recipe(), reduction=ReductionSpec(dim=24, discriminant=True)))
    b = load_bundle(tmp_path / "b")
    assert b.manifest["reduction"]["dim"] == 24 and b.manifest["reduction"]["method"].startswith("defect-discriminant")
    check = self_check(b, 1, full=True)
    assert check.verified and check.chosen in b.manifest["variants"]


def test_a_reduced_bundle_searches_in_the_reduced_space_and_scores_as_trained(reduced_bundle):
    b = load_bundle(reduced_bundle)
    assert b.manifest["reduction"]["dim"] == 32 and b.manifest["reduction"]["from_dim"] == 304
    for name in b.manifest["variants"]:
        v = b.variant(name)
        assert np.load(v.bank).shape[1] == 32 and b.manifest["variants"][name]["output_shape"][1] == 32
    # the station's own check rescores the stored probes with fp32 and refuses the bundle unless it
    # reproduces what training recorded: the reduction is inside the model, so it does
    check = self_check(b, 1, full=True)
    assert check.verified and check.chosen in b.manifest["variants"]
    assert Inspector(b, "fp32", 1).embed(np.zeros((128, 128, 3), np.uint8)).shape[1] == 32


def test_the_recipe_key_is_checked_where_it_is_written(tmp_path):
    from training.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("reduction:\n  dim: -4\n")
    with pytest.raises(KenpinError, match=r"r\.yaml, line 2: reduction\.dim = -4"):
        load_recipe(f)
    f.write_text("reduction:\n  dim: 64\n  whiten: true\n")
    assert load_recipe(f).reduction.dim == 64
    f.write_text("reduction:\n  dim: 64\n  whiten: true\n  discriminant: true\n")
    with pytest.raises(KenpinError, match=r"reduction\.discriminant = True: is a reduction of its own"):
        load_recipe(f)


def test_the_residual_channel_is_the_distance_to_the_kept_subspace():
    base = torch.nn.Conv2d(3, 24, 3, padding=1).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        maps = base(x).numpy()
    patches = maps.transpose(0, 2, 3, 1).reshape(-1, 24)
    red = fit_reduction(patches, 6, whiten=False, seed=0, residual=True)
    z = red.apply(maps)
    assert z.shape[1] == 6 and red.about("PCA")["method"] == "PCA + residual"
    centred = patches - red.mean
    rebuilt = centred @ red.components.T @ red.components
    want = np.linalg.norm(centred - rebuilt, axis=1)
    assert np.allclose(z.transpose(0, 2, 3, 1).reshape(-1, 6)[:, -1], want, atol=1e-3)
    with torch.no_grad():
        assert np.allclose(ReducedEmbedder(base, red)(x).numpy(), z, atol=1e-3)
    with pytest.raises(KenpinError, match="use one of them"):
        fit_reduction(patches, 6, whiten=True, seed=0, residual=True)
