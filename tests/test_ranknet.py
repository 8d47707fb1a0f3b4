"""RankNet loss, degradations and the ranker input: the pieces both roles rest on."""
import numpy as np
import pytest
import torch

from device.errors import KenpinError
from device.ranker_input import RankerInput
from training.rank.degrade import EVAL_GRID, KINDS, TRAIN_GRID, degrade, to_uint8
from training.rank.metrics import ndcg_at, pairwise_accuracy, ranking_metrics
from training.rank.optimize import ranknet_loss


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


def _texture(seed=0, shape=(240, 320)):
    """A smooth-ish random texture in [0.2, 0.8] (fine-band energy well above 1e-6, like real frames)."""
    import cv2

    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.6 * cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.0), 0.2, 0.8)


def test_whole_frame_fine_energy_rises_with_sub_lsb_noise_and_falls_with_blur():
    from device.ranker_input import FRAME_STATS, frame_stats

    up = []
    for seed in range(10):
        clean = _texture(seed)
        noisy = degrade(clean, "noise", 0.001, np.random.default_rng(seed))
        up.append(frame_stats(noisy, 1.0)[0] > frame_stats(clean, 1.0)[0])
        blurred = degrade(clean, "defocus", 1.5, np.random.default_rng(seed))
        assert frame_stats(blurred, 1.0)[0] < frame_stats(clean, 1.0)[0] - 0.5  # e-folds of energy lost
    assert np.mean(up) >= 0.9
    s = frame_stats(np.array([[0, 255], [128, 255]], np.uint8), 1 / 255)
    assert len(s) == len(FRAME_STATS)
    assert s[FRAME_STATS.index("clipped_dark")] == 0.25 and s[FRAME_STATS.index("clipped_bright")] == 0.5


def test_map_statistics_measure_the_share_above_the_threshold():
    from device.ranker_input import MAP_STATS, map_stats

    d = np.zeros((10, 10), np.float32)
    d[:2] = 1.6  # 20 % of the map at 1.6x the threshold
    s = dict(zip(MAP_STATS, map_stats(d)))
    assert s["above_1"] == pytest.approx(0.2) and s["above_1.5"] == pytest.approx(0.2) and s["above_2"] == 0
    assert s["mean_excess"] == pytest.approx(0.2 * 0.6) and s["log_peak"] == pytest.approx(np.log1p(1.6))


def test_the_statistics_plane_rides_last_and_flips_leave_it_alone(tmp_path):
    import cv2

    from device.ranker_input import FRAME_STATS, frame_stats
    from training.rank.pairs import judged_inputs

    img = (np.tile(np.arange(100, dtype=np.float32), (80, 1)) * 2.5).astype(np.uint8)
    inp = RankerInput(32, 1, stats=True)
    x = inp(img)
    assert x.shape == (1, 3, 32, 32) and inp.n_stats == len(FRAME_STATS)
    assert np.allclose(x[0, -1, 0, :inp.n_stats], frame_stats(img, 1 / 255))
    assert not x[0, -1].reshape(-1)[inp.n_stats:].any()
    cv2.imwrite(str(tmp_path / "a.png"), img)
    rows = judged_inputs([tmp_path / "a.png"], inp, inp)
    assert rows.dtype == np.float32 and np.array_equal(rows[1, 0], x[0, 0, :, ::-1])
    assert all(np.array_equal(r[-1], x[0, -1]) for r in rows)


def test_an_input_spec_written_before_the_stats_key_keeps_its_shape():
    old = RankerInput.from_dict({"size": 64, "crops": 4, "source": "frame"})
    assert not old.stats and old.shape == [1, 5, 64, 64]
    assert RankerInput.from_dict({"size": 32, "crops": 0, "source": "anomaly", "stats": True}).shape == [1, 2, 32, 32]
    with pytest.raises(KenpinError, match="input.stats"):
        RankerInput(32, 0, stats="yes")
    with pytest.raises(KenpinError, match="unknown key"):
        RankerInput.from_dict({"size": 32, "colour": 1})


def test_the_scorer_reads_the_statistics_plane():
    from training.rank.model import RankScorer

    torch.manual_seed(0)
    inp = RankerInput(32, 2, stats=True)
    m = RankScorer(inp, 8).eval()
    x = torch.rand(2, *inp.shape[1:])
    x[:, -1] = 0
    y = x.clone()
    y[:, -1, 0, 0] += 1.0  # only the first statistic changes
    assert not torch.allclose(m(x), m(y))


def test_family_floors_keep_the_union_of_false_retakes_at_the_target():
    from training.rank.floors import family_floors

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(400, 5)) * [1, 2, 3, 4, 5] + [0, 10, 20, 30, 40]
    floors, scale = family_floors(clean, 0.02)
    assert np.mean((clean < floors).any(1)) <= 0.02  # every family's retakes counted once
    assert np.all(floors < np.quantile(clean, 0.02, axis=0))  # so each family gets less than the whole target
    assert np.allclose(scale, clean.std(0))
    few = clean[:6]  # a handful of frames: no floor above the normal estimate of its quantile
    f6, s6 = family_floors(few, 0.02)
    assert np.all(f6 <= few.mean(0) - 2.6 * s6) and np.mean((few < f6).any(1)) == 0


@pytest.mark.parametrize("families, message", [
    ({"a": ["noise"], "b": ["noise", "defocus"]}, "'noise' is in both 'a' and 'b'"),
    ({"a": ["noise"]}, "belong to no family"),
    ({"a": ["noise", "smudge"]}, "kind 'smudge' unknown"),
    ({"a": []}, "expected a list of kinds"),
])
def test_a_bad_family_map_names_the_kind(tmp_path, families, message):
    import yaml

    from training.rank.recipe import load_ranker_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"quality": {"families": families}}))
    with pytest.raises(KenpinError, match=message):
        load_ranker_recipe(path)


def test_the_pair_sampler_judges_each_pair_by_its_kinds_family():
    from training.rank.pairs import QualityPool, quality_pairs

    kinds = ("noise", "defocus", "under")
    # two images; rows: clean, then each kind at levels 1 and 2
    group, kind, level = [], [], []
    for g in range(2):
        group += [g] * 7
        kind += [-1, 0, 0, 1, 1, 2, 2]
        level += [0, 1, 2, 1, 2, 1, 2]
    pool = QualityPool(np.zeros((14, 1, 8, 8), np.float16), np.array(group), np.array(kind), np.array(level), kinds)
    a, b, t, col = quality_pairs(pool, 0.3, [[0], [1, 2]])(np.random.default_rng(0), 2000)
    assert set(np.unique(col)) == {0, 1} and 0.4 < col.mean() < 0.6
    for x, y, c in zip(a, b, col):
        allowed = {-1, 0} if c == 0 else {-1, 1, 2}
        assert pool.kind[x] in allowed and pool.kind[y] in allowed and not (pool.kind[x] == pool.kind[y] == -1)
