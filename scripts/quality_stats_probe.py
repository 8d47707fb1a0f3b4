"""Probes behind BENCHMARKS.md "RankNet (issue 4)", second pass: what whole-frame statistics can order.

Everything here reads ``DATA/train/good`` only (never ``test/``):

1. ``stats``: a RankNet on the :data:`device.ranker_input.FRAME_STATS` vector alone (linear, and a
   32-unit MLP), trained on pairs from 160 images and validated on 60 others, per degradation
   kind and per noise level; plus how often a single statistic moves with σ = 0.001 noise.
2. ``exposure``: the ceiling of a brightness-only prior for same-image exposure pairs: a scorer
   peaked at one brightness (fitted on half the images) measured on the other half.
3. ``grade-map BUNDLE RATINGS/train.csv``: Kendall τ of each :data:`device.ranker_input.MAP_STATS`
   against the ratings of the TRAIN half only, and a seeded split of it into ``trainA.csv`` /
   ``valB.csv`` (3:1) next to it, for choosing grade settings without the held-out half.
4. ``grade-embedding BUNDLE RATINGS``: on that trainA / valB split, Kendall τ on valB of rankers
   over pooled patch embeddings (:func:`device.ranker_input.grade_vector` parts): ridge regression on
   log area, and RankNet scorers (linear, 16 and 32 hidden units, three weight decays).

    .venv/bin/python scripts/quality_stats_probe.py stats    ../shared/datasets/magnetic_tile [noise,defocus,...]
    .venv/bin/python scripts/quality_stats_probe.py exposure ../shared/datasets/magnetic_tile
    .venv/bin/python scripts/quality_stats_probe.py grade-map BUNDLE RATINGS/train.csv
    .venv/bin/python scripts/quality_stats_probe.py grade-embedding BUNDLE RATINGS     # after grade-map
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from device.images import list_images, read_rgb
from device.ranker_input import FRAME_STATS, RankerInput, frame_stats
from training.degrade import KINDS, degrade, to_float, to_uint8
from training.rank_pairs import QualityPool, build_quality_pool, quality_pairs


def _images(data: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    paths = list_images(data / "train" / "good")
    pick = np.random.default_rng(seed).permutation(len(paths))[:n]
    return [read_rgb(paths[i]) for i in pick]


def _same_image_accuracy(pool: QualityPool, s: np.ndarray, rows: np.ndarray) -> float:
    clean = {int(g): s[i] for i, g in enumerate(pool.group) if pool.kind[i] < 0}
    return round(float(np.mean([clean[int(pool.group[i])] > s[i] for i in rows])), 3)


def _fit(x: torch.Tensor, pool: QualityPool, hidden: int, steps: int = 3000) -> torch.nn.Module:
    """RankNet (score difference → sigmoid → cross-entropy) on statistic vectors, the recipe's pair mix."""
    torch.manual_seed(0)
    n = x.shape[1]
    m = torch.nn.Linear(n, 1) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(n, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt, sample, rng = torch.optim.Adam(m.parameters(), 0.01), quality_pairs(pool, 0.25), np.random.default_rng(0)
    for _ in range(steps):
        a, b, t, _ = sample(rng, 128)
        loss = torch.nn.functional.binary_cross_entropy_with_logits((m(x[a]) - m(x[b]))[:, 0], torch.tensor(t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def probe_stats(data: Path, kinds: tuple[str, ...]) -> None:
    """Same-image pairwise accuracy of stats-only RankNets on held-out train/good images."""
    ims = _images(data, 220)
    inp = RankerInput(16, 0, stats=True)  # a small thumbnail: only the statistics plane is used
    tr = build_quality_pool(ims[:160], inp, kinds, 2, 0.5, 0)
    va = build_quality_pool(ims[160:], inp, kinds, 2, 0.5, 1)
    x, v = (torch.tensor(p.inputs[:, -1, 0, :inp.n_stats]) for p in (tr, va))
    for hidden in (0, 32):
        model = _fit(x, tr, hidden)
        with torch.no_grad():
            s = model(v)[:, 0].numpy()
        acc = {k: _same_image_accuracy(va, s, np.flatnonzero(va.kind == j)) for j, k in enumerate(va.kinds)}
        noise = np.flatnonzero(va.kind == va.kinds.index("noise")) if "noise" in va.kinds else np.zeros(0, int)
        by_level = {int(lv): _same_image_accuracy(va, s, noise[va.level[noise] == lv]) for lv in np.unique(va.level[noise])}
        print(f"hidden {hidden}: {acc}\n  noise by training level (1 = σ 0.0007): {by_level}")
    rng = np.random.default_rng(0)
    for sigma in (0.001, 0.01):
        up = [frame_stats(to_uint8(degrade(to_float(im[..., 0]), "noise", sigma, rng)), 1 / 255)
              > frame_stats(im[..., 0], 1 / 255) for im in ims[160:]]
        print(f"σ = {sigma}, 8-bit: share of frames whose statistic rises", {k: round(float(u), 3) for k, u in zip(FRAME_STATS, np.mean(up, 0))})


def probe_exposure(data: Path) -> None:
    """Best same-image exposure ordering by a brightness prior peaked at one level (fit on half A, measured on B)."""
    paths = list_images(data / "train" / "good")
    m = np.array([read_rgb(p)[..., 0].mean() / 255 for p in paths])
    idx = np.random.default_rng(0).permutation(len(m))
    a, b = m[idx[::2]], m[idx[1::2]]
    print("mean brightness 1/5/50/95/99 %:", np.percentile(m, [1, 5, 50, 95, 99]).round(3), "of", len(m), "images")

    def acc(mm: np.ndarray, peak: float, g: float) -> float:
        s = lambda x: -np.abs(np.log(x) - np.log(peak))  # noqa: E731
        return float(np.mean(s(mm) > s(np.minimum(mm * g, 1))))

    gains = (0.78, 0.62, 0.5, 1.3, 1.6, 2.0)  # the evaluation grid's exposure steps
    peaks = np.exp(np.linspace(np.log(0.15), np.log(0.9), 200))
    best = max(peaks, key=lambda p: np.mean([acc(a, p, g) for g in gains]))
    print(f"peak fitted on half A: {best:.3f}; half B pairwise accuracy:", {g: round(acc(b, best, g), 3) for g in gains})


def probe_grade_map(bundle: Path, ratings: Path) -> None:
    """Per map statistic: Kendall τ with the training ratings; and the trainA / valB split of them."""
    from device.bundle import load_bundle
    from device.ranker_input import MAP_STATS, map_stats
    from device.runtime import Inspector
    from training.rank_eval import kendall_tau
    from training.rank_pairs import read_judgements

    j = read_judgements(ratings)
    insp = Inspector(load_bundle(bundle), "int8", 1)
    stats = np.array([map_stats(insp.anomaly_map(read_rgb(p))) for p in j.images])
    for k, name in enumerate(MAP_STATS):
        col = stats[:, k]
        print(f"{name:<12} τ {kendall_tau(col, np.asarray(j.ratings)):.3f}" if np.ptp(col) else f"{name:<12} constant")
    head, *rows = ratings.read_text().splitlines()
    order = np.random.default_rng(0).permutation(len(rows))
    val = set(order[: len(rows) // 4].tolist())
    for name, keep in (("trainA.csv", lambda i: i not in val), ("valB.csv", lambda i: i in val)):
        (ratings.parent / name).write_text("\n".join([head] + [r for i, r in enumerate(rows) if keep(i)]) + "\n")


def _rated(path: Path) -> tuple[list[str], np.ndarray]:
    from training.rank_pairs import read_judgements

    j = read_judgements(path)
    return [str(p) for p in j.images], np.asarray(j.ratings)


def _ranknet_tau(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray, hidden: int, wd: float) -> float:
    """RankNet on standardized vectors (all unequal pairs of ``a``), Kendall τ on ``b``."""
    from scipy.stats import kendalltau

    torch.manual_seed(0)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    xa, xb = (torch.tensor((v - mu) / sd, dtype=torch.float32) for v in (a, b))
    i, j = np.triu_indices(len(ya), 1)
    keep = ya[i] != ya[j]
    i, j, t = i[keep], j[keep], (ya[i] > ya[j])[keep].astype(np.float32)
    n = xa.shape[1]
    m = torch.nn.Linear(n, 1) if not hidden else torch.nn.Sequential(
        torch.nn.Dropout(0.2), torch.nn.Linear(n, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt, rng = torch.optim.AdamW(m.parameters(), 0.003, weight_decay=wd), np.random.default_rng(0)
    for _ in range(600):
        k = rng.integers(0, len(i), 64)
        s = m(xa)[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s[i[k]] - s[j[k]], torch.tensor(t[k]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        return float(kendalltau(m(xb)[:, 0].numpy(), yb).statistic)


def probe_grade_embedding(bundle: Path, ratings: Path) -> None:
    """Pooled patch embeddings vs defect area on trainA → valB (both from the TRAIN half)."""
    from scipy.stats import kendalltau
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from device.bundle import load_bundle
    from device.ranker_input import grade_vector
    from device.runtime import Inspector

    insp = Inspector(load_bundle(bundle), "int8", 1)
    (pa, ya), (pb, yb) = _rated(ratings / "trainA.csv"), _rated(ratings / "valB.csv")
    xa, xb = (np.array([grade_vector(*insp.patch_view(read_rgb(p))) for p in ps]) for ps in (pa, pb))
    d = insp.variant.dim
    parts = {"mean": slice(0, d), "mean+max": slice(0, 2 * d), "top8": slice(2 * d, 3 * d),
             "map stats": slice(3 * d, None), "all": slice(None)}
    print(f"{len(ya)} trainA / {len(yb)} valB images; Kendall τ on valB")
    for name, sl in parts.items():
        sc = StandardScaler().fit(xa[:, sl])
        ridge = [kendalltau(Ridge(alpha=a).fit(sc.transform(xa[:, sl]), np.log(ya + 1e-4)).predict(
            sc.transform(xb[:, sl])), yb).statistic for a in (1, 10, 100, 1000)]
        print(f"  {name:<10} ridge α 1/10/100/1000: " + " / ".join(f"{t:.3f}" for t in ridge))
    for name in ("mean", "all"):
        for hidden in (0, 16, 32):
            taus = [_ranknet_tau(xa[:, parts[name]], ya, xb[:, parts[name]], yb, hidden, wd) for wd in (0.01, 0.1, 1.0)]
            print(f"  {name:<10} RankNet {hidden:>2} hidden, weight decay 0.01/0.1/1: " + " / ".join(f"{t:.3f}" for t in taus))


if __name__ == "__main__":
    what, where = sys.argv[1], Path(sys.argv[2])
    if what == "stats":
        probe_stats(where, tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else KINDS)
    elif what == "grade-map":
        probe_grade_map(where, Path(sys.argv[3]))
    elif what == "grade-embedding":
        probe_grade_embedding(where, Path(sys.argv[3]))
    else:
        probe_exposure(where)
