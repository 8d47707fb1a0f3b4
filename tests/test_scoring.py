"""The station's scoring math: exact nearest-neighbour distances, normalization, calibration."""
import numpy as np
import pytest

from device.scoring import (Fusion, ImageScorer, NearestNeighbourScorer, Normalization, TextureModel, heatmap,
                            image_score, texture_descriptor)
from device.calibrate import calibrate
from training.coreset import greedy_coreset


def brute_force(patches, bank):
    return np.array([min(np.linalg.norm(p - b) for b in bank) for p in patches])


def test_nearest_distances_match_a_brute_force_loop():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    patches = rng.normal(size=(50, 24)).astype(np.float32) * 2
    got = NearestNeighbourScorer(bank).distances(patches)
    np.testing.assert_allclose(got, brute_force(patches, bank), rtol=1e-4, atol=1e-4)


def test_a_patch_equal_to_a_reference_scores_zero_and_large_frames_are_chunked():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(40, 8)).astype(np.float32)
    patches = np.repeat(bank[:1], 5000, axis=0)  # more rows than one GEMM chunk
    assert np.all(NearestNeighbourScorer(bank).distances(patches) < 1e-2)


def test_bank_dimension_mismatch_is_refused():
    with pytest.raises(ValueError, match="dimension"):
        NearestNeighbourScorer(np.zeros((4, 8), np.float32)).distances(np.zeros((2, 9), np.float32))


def test_normalization_puts_threshold_at_half_and_keeps_order():
    n = Normalization(threshold=3.0, scale=0.5)
    assert n(3.0) == pytest.approx(0.5)
    raw = np.linspace(0, 10, 101)
    assert np.all(np.diff(n(raw)) >= 0) and n(10.0) > 0.99 and n(0.0) < 0.01


def test_calibrated_threshold_rejects_about_the_target_share_of_good_parts():
    rng = np.random.default_rng(3)
    held_out, later = rng.gamma(5, 1, 2000), rng.gamma(5, 1, 20000)
    norm = calibrate(held_out, target_false_reject_rate=0.05)
    assert 0.03 < np.mean(later > norm.threshold) < 0.07
    assert norm(np.median(held_out)) == pytest.approx(0.1, abs=0.01)


def test_image_score_is_the_worst_patch_and_heatmap_has_frame_size():
    scores = np.zeros(12, np.float32)
    scores[7] = 5
    assert image_score(scores) == 5
    hm = heatmap(scores, (3, 4), (40, 30), sigma=2)
    assert hm.shape == (30, 40)
    y, x = np.unravel_index(np.argmax(hm), hm.shape)
    assert 10 <= y <= 20 and 20 <= x <= 40  # patch (row 1, col 3)


def test_greedy_coreset_keeps_a_rare_cluster_that_random_sampling_misses():
    rng = np.random.default_rng(4)
    common = rng.normal(size=(5000, 16)).astype(np.float32)
    rare = rng.normal(size=(10, 16)).astype(np.float32) * 0.1 + 20
    x = np.vstack([common, rare])
    idx = greedy_coreset(x, 50, projection_dim=8, seed=0)
    assert len(set(idx.tolist())) == 50
    assert np.any(idx >= 5000)
    # the rare-but-normal parts stay close to the bank (a random 1 % subset keeps one ~10 % of the time)
    assert NearestNeighbourScorer(x[idx]).distances(rare).max() < 2


def test_texture_distance_is_the_mahalanobis_distance_of_mean_and_spread():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(50, 4)).astype(np.float32)
    desc = texture_descriptor(patches)
    p64 = patches.astype(np.float64)
    np.testing.assert_allclose(desc, np.r_[p64.mean(0), p64.std(0)], rtol=1e-9)
    a = rng.normal(size=(8, 8))
    precision = a @ a.T + np.eye(8)
    model = TextureModel(np.zeros(8), precision)
    assert abs(model.distance(desc) - np.sqrt(desc @ precision @ desc)) < 1e-9


def test_fused_score_calls_a_defect_when_either_view_does():
    fusion = Fusion(patch_mean=1.0, patch_std=0.5, texture_mean=10.0, texture_std=2.0)
    assert fusion(1.0, 10.0) == 0.0
    assert fusion(3.0, 10.0) == 4.0  # a local defect alone
    assert fusion(1.0, 18.0) == 4.0  # an area-wide change alone


def test_without_texture_the_image_score_is_the_worst_patch():
    bank = np.zeros((3, 2), np.float32)
    patches = np.array([[0, 1], [0, 3]], np.float32)
    raw, distances = ImageScorer(NearestNeighbourScorer(bank)).score(patches)
    assert raw == 3.0 and list(distances) == [1.0, 3.0]
