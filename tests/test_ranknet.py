"""RankNet loss, degradations and the ranker input: the pieces both roles rest on."""
import numpy as np
import pytest
import torch

from device.errors import KenpinError
from device.quality import RankerInput
from training.degrade import EVAL_GRID, KINDS, TRAIN_GRID, degrade, to_uint8
from training.rank_eval import ndcg_at, pairwise_accuracy, ranking_metrics
from training.ranknet import ranknet_loss


def test_loss_is_cross_entropy_of_the_score_difference_brute_force():
    s_a, s_b = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.5, 0.5, 0.3])
    target = torch.tensor([1.0, 0.0, 0.5])
    expected = 0.0
    for a, b, t in zip(s_a.tolist(), s_b.tolist(), target.tolist()):
        p = 1 / (1 + np.exp(-(a - b)))
        expected -= t * np.log(p) + (1 - t) * np.log(1 - p)
    assert ranknet_loss(s_a, s_b, target).item() == pytest.approx(expected / 3, rel=1e-5)


def test_a_tie_pulls_two_scores_together_and_is_satisfied_when_equal():
    s = torch.tensor([1.0, -1.0], requires_grad=True)
    ranknet_loss(s[:1], s[1:], torch.tensor([0.5])).backward()
    assert s.grad[0] > 0 and s.grad[1] < 0  # gradient descent lowers a, raises b
    s2 = torch.tensor([0.7, 0.7], requires_grad=True)
    ranknet_loss(s2[:1], s2[1:], torch.tensor([0.5])).backward()
    assert torch.allclose(s2.grad, torch.zeros(2))


def test_evaluation_strengths_are_held_out_from_training():
    for kind in KINDS:
        assert not set(EVAL_GRID[kind]) & set(TRAIN_GRID[kind]), kind


@pytest.mark.parametrize("kind", KINDS)
def test_every_degradation_changes_the_image_more_as_it_gets_stronger(kind):
    rng = np.random.default_rng(0)
    img = np.clip(0.5 + 0.1 * rng.standard_normal((96, 128)).astype(np.float32), 0, 1)
    img = np.asarray(img, np.float32)
    diffs = [np.abs(degrade(img, kind, p, np.random.default_rng(1)) - img).mean() for p in TRAIN_GRID[kind]]
    assert diffs[0] > 0 and diffs[-1] > diffs[0]


def test_float_frames_keep_sub_lsb_noise_that_8_bit_rounding_mostly_removes():
    rng = np.random.default_rng(0)
    clean = (rng.integers(60, 200, (200, 240)) / 255.0).astype(np.float32)
    noisy = degrade(clean, "noise", 0.001, rng)
    inp = RankerInput(64, 2)
    float_diff = np.abs(inp(noisy) - inp(clean))[0, 1:]
    u8_diff = np.abs(inp(to_uint8(noisy)) - inp(to_uint8(clean)))[0, 1:]
    assert float_diff.mean() == pytest.approx(0.0008, rel=0.1)  # E|N(0, 0.001)| = 0.0008
    assert np.mean(u8_diff > 0) < 0.1  # only ~5 % of pixels cross a rounding boundary


def test_ranker_input_shapes_rgb_gray_and_tiny_frames():
    inp = RankerInput(32, 4)
    rgb = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    assert inp(rgb).shape == (1, 5, 32, 32)
    assert inp(rgb[..., 0]).shape == (1, 5, 32, 32)
    assert inp(rgb[:20, :20]).shape == (1, 5, 32, 32)  # smaller than a crop: enlarged, not an error
    with pytest.raises(KenpinError, match="input.size"):
        RankerInput(30, 1)


def test_ranking_metrics_on_a_known_order():
    truth = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m = ranking_metrics(truth * 10, truth, k=3)
    assert m["kendall_tau"] == pytest.approx(1.0) and m["ndcg@3"] == pytest.approx(1.0)
    assert m["pairwise_accuracy"] == 1.0
    assert ranking_metrics(-truth, truth, k=3)["kendall_tau"] == pytest.approx(-1.0)
    assert ndcg_at(-truth, truth, 3) < 0.7
    assert pairwise_accuracy(np.array([1.0, 1.0]), np.array([0.0, 1.0])) == 0.75
