"""Metric-learning losses for patch embeddings: a distance, a miner and a reducer, composed.

Written in the style of pytorch-metric-learning (without depending on it): each piece is a plain
function passed in, so a loss is a few lines and each piece is tested against a brute-force loop.

- distance: ``(a, b) -> MxN`` matrix. ``pairwise_distances`` (Euclidean) is the default.
- miner: ``(emb, labels, margin, distance) -> Triplets`` of index tensors; ``mine_all``,
  ``mine_hard``, ``mine_semi_hard``. Miners see detached embeddings: choosing triplets is not
  differentiated, only the loss on the chosen ones is.
- reducer: ``terms -> (loss, active)``; ``mean_nonzero`` averages over the terms that are > 0, so
  the loss does not shrink as more triplets become easy (the trainer logs ``active`` instead).

Labels are per patch: 0 = good, 1 = defect, but any non-negative integers work. Label ``IGNORE``
(-1, patches on a defect's border, see ``pair_sampling.patch_labels``) takes part in no pair.

Fine-tuning pretrained features on good data with a contrastive objective tends to collapse them
(Reiss & Hoshen, "Mean-Shifted Contrastive Loss for Anomaly Detection", 2021; PANDA before it):
``collapse_stats`` lets a trainer see that happen, ``feature_drift_penalty`` holds it back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from training.metric.pair_sampling import IGNORE

Distance = Callable[[Tensor, Tensor], Tensor]


class Triplets(NamedTuple):
    """Index tensors (T,) of anchors, positives and negatives into the embedding rows."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class Reduced(NamedTuple):
    """A reduced loss (scalar tensor, differentiable) and how many terms were > 0, for logging."""

    loss: Tensor
    active: int


Miner = Callable[..., Triplets]  # (emb, labels, margin, distance, negatives=None) -> Triplets
Reducer = Callable[[Tensor], Reduced]


# ---- distance -------------------------------------------------------------------------------


def pairwise_distances(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``a`` (MxD) and ``b`` (NxD) → MxN.

    Uses |a|² + |b|² - 2ab (one matmul, no MxNxD tensor). Rounding can make that slightly
    negative, and sqrt has an infinite slope at 0, so it is clamped to ``eps`` first: gradients
    stay finite (zero, not NaN) for coincident rows. The price of the expansion: in float32,
    coincident rows come out up to ~1e-3 apart instead of 0; distinct ones are accurate to ~1e-6.
    """
    # CNN features share a large positive mean; removing it first keeps |a|², |b|² small, which
    # cuts the cancellation error of the expansion (distances do not change under a shift).
    shift = torch.cat([a, b]).mean(0, keepdim=True).detach()
    a, b = a - shift, b - shift
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * a @ b.T
    return sq.clamp_min(eps).sqrt()


# ---- miners ---------------------------------------------------------------------------------


def _pair_masks(labels: Tensor, negatives: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """NxN bool masks of positive pairs (same label, i != j) and negative pairs (labels differ).

    With ``negatives`` (N bools: "this row is a defect"), a negative pair must join a defect and a
    non-defect: two good patches of different places are then neither pulled nor pushed, which is
    what nearest-neighbour scoring wants (good texture keeps its spread; only defects move away).
    """
    labels = labels.reshape(-1)
    valid = labels != IGNORE
    both = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg = ~same & both
    if negatives is not None:
        negatives = negatives.reshape(-1).to(device=labels.device, dtype=torch.bool)
        neg = neg & (negatives[:, None] ^ negatives[None, :])
    return same & both & ~eye, neg


def _check(emb: Tensor, labels: Tensor) -> None:
    if emb.ndim != 2 or labels.reshape(-1).shape[0] != emb.shape[0]:
        raise ValueError(f"expected embeddings NxD and N labels, got {tuple(emb.shape)} and {tuple(labels.shape)}")


def mine_all(emb: Tensor, labels: Tensor, margin: float = 0.0,
             distance: Distance = pairwise_distances, negatives: Tensor | None = None) -> Triplets:
    """Every valid (anchor, positive, negative): N³ memory, so for small batches only.

    ``margin`` and ``distance`` are unused; they keep the signature every miner shares.
    """
    _check(emb, labels)
    pos, neg = _pair_masks(labels, negatives)
    a, p, n = torch.nonzero(pos[:, :, None] & neg[:, None, :], as_tuple=True)
    return Triplets(a, p, n)


@torch.no_grad()
def mine_hard(emb: Tensor, labels: Tensor, margin: float = 0.0,
              distance: Distance = pairwise_distances, negatives: Tensor | None = None) -> Triplets:
    """Per anchor: its farthest positive and its nearest negative (one triplet per anchor).

    Anchors without a positive or without a negative are skipped. ``margin`` is unused.
    """
    _check(emb, labels)
    pos, neg = _pair_masks(labels, negatives)
    d = distance(emb, emb)
    inf = torch.tensor(float("inf"), device=d.device, dtype=d.dtype)
    p = torch.where(pos, d, -inf).argmax(1)
    n = torch.where(neg, d, inf).argmin(1)
    a = torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0]
    return Triplets(a, p[a], n[a])


@torch.no_grad()
def mine_semi_hard(emb: Tensor, labels: Tensor, margin: float,
                   distance: Distance = pairwise_distances, negatives: Tensor | None = None) -> Triplets:
    """FaceNet semi-hard: per (anchor, positive) pair, the nearest negative with d_ap < d_an < d_ap + margin.

    Where no negative lies in that band, the anchor's hardest (nearest) negative is used. Every
    positive pair gives one triplet; the search is a sort plus a binary search, O(N² log N).
    """
    _check(emb, labels)
    pos, neg = _pair_masks(labels, negatives)
    d = distance(emb, emb)
    # Each anchor's negative distances in ascending order (non-negatives pushed to +inf) ...
    neg_sorted, neg_order = torch.where(neg, d, torch.full_like(d, float("inf"))).sort(1)
    # ... so the first negative strictly farther than d_ap is one binary search away.
    first = torch.searchsorted(neg_sorted, d.contiguous(), right=True).clamp_max(d.shape[1] - 1)
    cand = neg_sorted.gather(1, first)
    in_band = (cand > d) & (cand < d + margin)
    n = torch.where(in_band, neg_order.gather(1, first), neg_order[:, :1].expand_as(d))
    a, p = torch.nonzero(pos & neg.any(1, keepdim=True), as_tuple=True)
    return Triplets(a, p, n[a, p])


@torch.no_grad()
def mine_nearest_good(emb: Tensor, images: Tensor, margin: float, distance: Distance = pairwise_distances,
                      negatives: Tensor | None = None) -> Triplets:
    """Triplets shaped like nearest-neighbour scoring: per good anchor patch, the positive is its
    nearest good patch *of another image* (what a reference bank offers at inspection: the part
    itself is never in it; easy-positive mining, Xuan et al. 2020), the negative the nearest defect
    patch farther than that positive (semi-hard), else the nearest defect patch (hard).

    ``images``: the image each row comes from (both views of one image share it; IGNORE rows take
    no part); ``negatives``: the defect rows (required).
    """
    _check(emb, images)
    if negatives is None:
        raise ValueError("mine_nearest_good needs the defect rows (negatives)")
    images, negatives = images.reshape(-1), negatives.reshape(-1).bool()
    valid = images != IGNORE
    good = valid & ~negatives
    d = distance(emb, emb)
    inf = torch.full_like(d, float("inf"))
    other = images[:, None] != images[None, :]
    d_pos = torch.where(other & good[None, :], d, inf)
    p = d_pos.argmin(1)
    dap = d_pos.gather(1, p[:, None])
    d_neg = torch.where((valid & negatives)[None, :], d, inf)
    in_band = torch.where(d_neg > dap, d_neg, inf)
    n = torch.where(torch.isfinite(in_band.min(1).values), in_band.argmin(1), d_neg.argmin(1))
    a = torch.nonzero(good & torch.isfinite(dap[:, 0]) & torch.isfinite(d_neg.min(1).values), as_tuple=True)[0]
    return Triplets(a, p[a], n[a])


# ---- reducer and losses ---------------------------------------------------------------------


def mean_nonzero(terms: Tensor) -> Reduced:
    """Mean of the terms > 0, so easy triplets don't dilute it; 0 when none is.

    ``terms`` are indexed out of the distance matrix, so even an empty or all-zero set keeps its
    place in the graph and ``loss.backward()`` works (giving zero gradients).
    """
    active = terms > 0
    n = int(active.sum())
    return Reduced(terms[active].sum() / max(n, 1), n)


def triplet_margin_loss(emb: Tensor, labels: Tensor, margin: float = 0.2, miner: Miner = mine_semi_hard,
                        distance: Distance = pairwise_distances, reducer: Reducer = mean_nonzero,
                        negatives: Tensor | None = None) -> Reduced:
    """max(0, d(a,p) - d(a,n) + margin) over the mined triplets, reduced (default: mean over > 0).

    The mean over active triplets (pytorch-metric-learning's AvgNonZeroReducer) keeps the gradient
    from fading as training makes most triplets easy; ``active`` says how many are still hard.
    """
    _check(emb, labels)
    # Miners take embeddings (as in pytorch-metric-learning) and compute their own, gradient-free
    # distances: one extra NxN matmul, small next to the backbone, for miners usable on their own.
    a, p, n = miner(emb.detach(), labels, margin, distance, negatives)
    d = distance(emb, emb)
    return reducer(torch.relu(d[a, p] - d[a, n] + margin))


def contrastive_loss(emb: Tensor, labels: Tensor, pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance: Distance = pairwise_distances, reducer: Reducer = mean_nonzero,
                     negatives: Tensor | None = None) -> Reduced:
    """Siamese contrastive loss (Hadsell, Chopra & LeCun 2006) over all pairs i < j.

    Positive pairs cost ½·max(0, d - pos_margin)², negative pairs ½·max(0, neg_margin - d)².
    The two are reduced separately and added: a batch holds far more good-good pairs than
    good-defect ones, and pooling them would let the positives drown the negatives.
    """
    _check(emb, labels)
    pos, neg = _pair_masks(labels, negatives)
    upper = torch.ones_like(pos).triu(1)
    d = distance(emb, emb)
    on_pos = reducer(0.5 * torch.relu(d[pos & upper] - pos_margin) ** 2)
    on_neg = reducer(0.5 * torch.relu(neg_margin - d[neg & upper]) ** 2)
    return Reduced(on_pos.loss + on_neg.loss, on_pos.active + on_neg.active)


# ---- feature collapse -----------------------------------------------------------------------


@dataclass(frozen=True)
class CollapseStats:
    """How spread a set of embeddings is; a collapsing fine-tune drives all three towards 0.

    mean_distance: mean Euclidean distance between distinct rows (raw scale, compare with margins).
    variance: total variance of the L2-normalized rows, 1 - |mean|² (0 = one direction, ≤ 1).
    effective_rank: exp(entropy of the normalized singular values) of the centred, normalized rows
    (Roy & Vetterli 2007): how many directions the set really uses; 0 when it has no spread.
    """

    mean_distance: float
    variance: float
    effective_rank: float

    def looks_collapsed(self, min_variance: float = 1e-3, min_rank: float = 2.0) -> bool:
        """True when the embeddings point nearly one way or span fewer than ``min_rank`` directions."""
        return self.variance < min_variance or self.effective_rank < min_rank


@torch.no_grad()
def collapse_stats(emb: Tensor, max_rows: int = 2048) -> CollapseStats:
    """Spread statistics of ``emb`` (NxD, N ≥ 2); at most ``max_rows`` evenly spaced rows are used."""
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise ValueError(f"collapse_stats needs NxD embeddings with N >= 2, got {tuple(emb.shape)}")
    x = emb[torch.linspace(0, emb.shape[0] - 1, min(max_rows, emb.shape[0])).long()].double()
    n = x.shape[0]
    d = pairwise_distances(x, x)
    mean_distance = float((d.sum() - d.diagonal().sum()) / (n * (n - 1)))
    unit = torch.nn.functional.normalize(x, dim=1)
    variance = float(1.0 - unit.mean(0).square().sum())
    s = torch.linalg.svdvals(unit - unit.mean(0))
    if float(s.sum()) < 1e-9:  # every row the same direction: no spread, no rank
        return CollapseStats(mean_distance, max(variance, 0.0), 0.0)
    prob = s / s.sum()
    entropy = -(prob * torch.log(prob.clamp_min(1e-30))).sum()
    return CollapseStats(mean_distance, max(variance, 0.0), float(entropy.exp()))


def feature_drift_penalty(emb: Tensor, frozen_emb: Tensor) -> Tensor:
    """Mean over rows of the squared distance to the frozen (pretrained) features of the same patches.

    Added to a metric loss with a small weight, it keeps the fine-tuned embedding near the
    pretrained one, whose spread is what makes nearest-neighbour scoring work.
    """
    if emb.shape != frozen_emb.shape:
        raise ValueError(f"emb {tuple(emb.shape)} and frozen_emb {tuple(frozen_emb.shape)} must match")
    return (emb - frozen_emb.detach()).square().sum(-1).mean()
