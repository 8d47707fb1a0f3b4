"""Metric losses and miners against brute-force loops, plus the cases a trainer would trip over."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.metric.losses import (
    collapse_stats,
    contrastive_loss,
    feature_drift_penalty,
    mine_all,
    mine_hard,
    mine_semi_hard,
    pairwise_distances,
    triplet_margin_loss,
)

MINERS = [mine_all, mine_hard, mine_semi_hard]


def _batch(seed: int, n: int = 14, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings and labels: two classes, an extra one, and two ignored (-1) patches."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g)
    labels = torch.tensor([0, 1, 2, -1] + [0, 1] * ((n - 4) // 2))[:n]
    return emb, labels


def _d(emb: torch.Tensor, i: int, j: int) -> float:
    return math.dist(emb[i].tolist(), emb[j].tolist())


def _brute_triplets(emb, labels, miner, margin):
    """Triplets the way the docs describe them, one Python loop at a time."""
    y, n = labels.tolist(), len(labels)
    pos = {a: [p for p in range(n) if p != a and y[p] == y[a] and y[a] != -1] for a in range(n)}
    neg = {a: [k for k in range(n) if y[k] != y[a] and -1 not in (y[a], y[k])] for a in range(n)}
    out = []
    for a in range(n):
        if not pos[a] or not neg[a]:
            continue
        if miner is mine_all:
            out += [(a, p, k) for p in pos[a] for k in neg[a]]
        elif miner is mine_hard:
            out.append((a, max(pos[a], key=lambda p: _d(emb, a, p)), min(neg[a], key=lambda k: _d(emb, a, k))))
        else:
            for p in pos[a]:
                dap = _d(emb, a, p)
                band = [k for k in neg[a] if dap < _d(emb, a, k) < dap + margin]
                out.append((a, p, min(band or neg[a], key=lambda k: _d(emb, a, k))))
    return out


def test_pairwise_distances_match_loop_even_with_a_large_common_offset():
    emb, _ = _batch(0)
    for x in (emb, emb + 20.0):  # CNN features sit far from the origin
        d = pairwise_distances(x[:9], x[4:])
        want = torch.tensor([[_d(x, i, j) for j in range(4, len(x))] for i in range(9)])
        distinct = want > 0
        assert torch.allclose(d[distinct], want[distinct], atol=1e-5)
        assert (d[~distinct] < 1e-3).all()  # float32 rounding of |a|² + |b|² - 2ab, documented


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miners_and_triplet_loss_match_brute_force(miner, seed):
    emb, labels = _batch(seed)
    margin = 0.8
    got = sorted(zip(*(t.tolist() for t in miner(emb, labels, margin))))
    want = sorted(_brute_triplets(emb, labels, miner, margin))
    assert got == want and got
    terms = [max(0.0, _d(emb, a, p) - _d(emb, a, k) + margin) for a, p, k in want]
    active = [t for t in terms if t > 0]
    loss, n_active = triplet_margin_loss(emb, labels, margin, miner)
    assert n_active == len(active)
    assert abs(float(loss) - sum(active) / len(active)) < 1e-5


def test_miners_never_use_ignored_patches():
    emb, labels = _batch(3)
    ignored = set(torch.nonzero(labels == -1).flatten().tolist())
    for miner in MINERS:
        assert not ignored & set(torch.cat(list(miner(emb, labels, 0.5))).tolist())


def test_semi_hard_picks_the_nearest_negative_in_the_band_else_the_hardest():
    # On a line: anchor 0, positive at 1; negatives at 0.5 (hard), 1.3 and 1.4 (semi-hard), 3 (easy).
    emb = torch.tensor([[0.0], [1.0], [0.5], [1.4], [1.3], [3.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    a, p, n = mine_semi_hard(emb, labels, margin=0.5)
    assert n[(a == 0) & (p == 1)].tolist() == [4]  # 1.3: farther than the positive, within margin
    a, p, n = mine_semi_hard(emb, labels, margin=0.2)
    assert n[(a == 0) & (p == 1)].tolist() == [2]  # band (1, 1.2) empty: hardest negative, 0.5


@pytest.mark.parametrize("seed", [4, 5])
def test_semi_hard_negatives_lie_in_the_band_on_random_data(seed):
    emb, labels = _batch(seed, n=20)
    margin = 0.7
    d = pairwise_distances(emb, emb)
    neg = (labels[:, None] != labels[None, :]) & (labels[:, None] != -1) & (labels[None, :] != -1)
    for a, p, n in zip(*mine_semi_hard(emb, labels, margin)):
        band = neg[a] & (d[a] > d[a, p]) & (d[a] < d[a, p] + margin)
        if band.any():
            assert d[a, p] < d[a, n] < d[a, p] + margin
        else:
            assert d[a, n] == d[a][neg[a]].min()


def test_contrastive_loss_matches_brute_force():
    emb, labels = _batch(6)
    pos_margin, neg_margin = 0.5, 2.5
    y, pos, neg = labels.tolist(), [], []
    for i, j in itertools.combinations(range(len(y)), 2):
        if -1 in (y[i], y[j]):
            continue
        d = _d(emb, i, j)
        if y[i] == y[j]:
            pos.append(0.5 * max(0.0, d - pos_margin) ** 2)
        else:
            neg.append(0.5 * max(0.0, neg_margin - d) ** 2)
    mean_nz = [sum(t for t in ts if t > 0) / max(1, sum(t > 0 for t in ts)) for ts in (pos, neg)]
    loss, active = contrastive_loss(emb, labels, pos_margin, neg_margin)
    assert abs(float(loss) - sum(mean_nz)) < 1e-5
    assert active == sum(t > 0 for t in pos + neg)


def test_losses_are_zero_when_classes_are_separated_by_more_than_the_margin():
    g = torch.Generator().manual_seed(7)
    good = torch.randn(8, 4, generator=g) * 0.05
    bad = torch.randn(4, 4, generator=g) * 0.05 + torch.tensor([10.0, 0, 0, 0])
    emb = torch.cat([good, bad]).requires_grad_()
    labels = torch.tensor([0] * 8 + [1] * 4)
    results = [triplet_margin_loss(emb, labels, 1.0, miner) for miner in MINERS]
    results.append(contrastive_loss(emb, labels, pos_margin=1.0, neg_margin=5.0))
    for loss, active in results:
        assert loss.item() == 0.0 and active == 0
        loss.backward()  # a batch with nothing left to learn still steps without error
    assert torch.all(emb.grad == 0)


def test_gradients_are_finite_when_embeddings_coincide():
    emb, labels = _batch(8, n=8)
    emb[1] = emb[0]  # a good and a defect patch on the same point (anchor = negative)
    emb[4] = emb[0]  # two good patches on the same point (anchor = positive)
    emb.requires_grad_()
    for loss_fn in [lambda e: triplet_margin_loss(e, labels, 0.5, m).loss for m in MINERS] + [
        lambda e: contrastive_loss(e, labels).loss,
        lambda e: pairwise_distances(e, e).sum(),
    ]:
        emb.grad = None
        loss_fn(emb).backward()
        assert torch.isfinite(emb.grad).all()


def test_collapse_stats_tell_a_collapsed_set_from_a_spread_one():
    g = torch.Generator().manual_seed(9)
    spread = collapse_stats(torch.randn(64, 16, generator=g))
    collapsed = collapse_stats(torch.randn(1, 16, generator=g).repeat(64, 1))
    one_direction = collapse_stats(torch.rand(64, 1, generator=g) * torch.randn(1, 16, generator=g).abs())
    assert not spread.looks_collapsed()
    assert spread.effective_rank > 8 and spread.variance > 0.9 and spread.mean_distance > 4
    assert collapsed.looks_collapsed() and collapsed.mean_distance < 1e-5 and collapsed.effective_rank == 0
    # Rows that differ only in length point one way: after normalization they are one point.
    assert one_direction.looks_collapsed() and one_direction.variance < 1e-6


def test_feature_drift_penalty_is_mean_squared_distance_to_the_frozen_features():
    emb, _ = _batch(10)
    frozen = emb + 0.1 * torch.randn_like(emb)
    want = sum(_d(torch.stack([emb[i], frozen[i]]), 0, 1) ** 2 for i in range(len(emb))) / len(emb)
    trained = emb.clone().requires_grad_()
    frozen.requires_grad_()
    penalty = feature_drift_penalty(trained, frozen)
    assert abs(penalty.item() - want) < 1e-5
    assert float(feature_drift_penalty(emb, emb)) == 0.0
    penalty.backward()
    assert trained.grad is not None and frozen.grad is None  # the pretrained side stays put


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_good_miner_matches_brute_force(seed):
    from training.metric.losses import mine_nearest_good

    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(16, 4, generator=g)
    images = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, -1, 0, 1, 2])
    defect = torch.zeros(16, dtype=torch.bool)
    defect[[2, 5, 13]] = True
    a, p, n = mine_nearest_good(emb, images, 0.5, negatives=defect)
    y, bad = images.tolist(), defect.tolist()
    expected = []
    for i in range(16):
        if y[i] == -1 or bad[i]:
            continue
        pos = [j for j in range(16) if y[j] not in (-1, y[i]) and not bad[j]]
        negs = [j for j in range(16) if y[j] != -1 and bad[j]]
        pj = min(pos, key=lambda j: _d(emb, i, j))
        farther = [j for j in negs if _d(emb, i, j) > _d(emb, i, pj)]
        expected.append((i, pj, min(farther or negs, key=lambda j: _d(emb, i, j))))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == expected
