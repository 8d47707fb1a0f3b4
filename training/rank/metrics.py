"""Evaluation of rankers: pairwise accuracy, Kendall τ, NDCG@k, and score vs degradation strength."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import ndcg_score
from tqdm import tqdm

from training.rank.degrade import EVAL_GRID, degrade, to_float, to_uint8

ScoresFn = Callable[[np.ndarray], np.ndarray]  # frame → [gate quality, per-family scores...]


def pairwise_accuracy(better: np.ndarray, worse: np.ndarray) -> float:
    """Share of pairs the scorer orders right (an exact tie counts half)."""
    better, worse = np.asarray(better, float), np.asarray(worse, float)
    return float(np.mean((better > worse) + 0.5 * (better == worse)))


def kendall_tau(scores: np.ndarray, truth: np.ndarray) -> float:
    """Kendall τ-b between scores and the true order (ties in either handled)."""
    return float(kendalltau(scores, truth).statistic)


def ndcg_at(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """NDCG@k of the ranking by ``scores`` with gains ``relevance`` (≥ 0)."""
    return float(ndcg_score(np.asarray(relevance, float)[None], np.asarray(scores, float)[None], k=k))


def ranking_metrics(scores: np.ndarray, ratings: np.ndarray, k: int = 10) -> dict[str, float]:
    """Kendall τ, NDCG@k (ratings shifted to be ≥ 0) and pairwise accuracy over all unequal pairs."""
    r = np.asarray(ratings, float)
    s = np.asarray(scores, float)
    i, j = np.triu_indices(len(r), 1)
    keep = r[i] != r[j]
    hi = np.where(r[i] > r[j], i, j)[keep]
    lo = np.where(r[i] > r[j], j, i)[keep]
    return {"kendall_tau": kendall_tau(s, r), f"ndcg@{k}": ndcg_at(s, r - r.min(), k),
            "pairwise_accuracy": pairwise_accuracy(s[hi], s[lo]), "n_images": int(len(r))}


def _frames(rgb: np.ndarray) -> np.ndarray:
    """Gray images stored as RGB are degraded as one plane (3x less work, the same frame)."""
    return rgb[..., 0] if rgb.ndim == 3 and np.array_equal(rgb[..., 0], rgb[..., 1]) else rgb


def degradation_table(score: ScoresFn, images: list[np.ndarray], seed: int,
                      column: Callable[[str], tuple[int, str]] = lambda kind: (0, "quality"),
                      grid: dict[str, tuple[float, ...]] = EVAL_GRID, float_kinds: tuple[str, ...] = ("noise",)
                      ) -> dict[str, Any]:
    """Score every image clean and at every held-out step; pairwise accuracy of clean vs degraded.

    ``score`` maps a frame to a vector whose column 0 is the gate's quality; ``column(kind)`` names
    the column (and its family) that ranks that kind, where pairwise accuracy is measured; the
    gate's own ordering is reported too. The station's path: degraded frames are rounded to 8
    bits, like a camera's. For ``float_kinds`` also the float path: the degraded frame is scored in
    float, never rounded (a deeper sensor, or the station's float input), against the same clean frame.
    """
    rng = np.random.default_rng(seed)
    clean = np.array([score(_frames(im)) for im in images])
    rows: list[dict[str, Any]] = []
    for kind, params in tqdm(grid.items(), desc="degradations", unit="kind", leave=False):
        c, family = column(kind)
        for level, p in enumerate(params, start=1):
            deg_u8, deg_f = [], []
            for im in images:
                d = degrade(to_float(_frames(im)), kind, p, rng)
                deg_u8.append(score(to_uint8(d)))
                if kind in float_kinds:
                    deg_f.append(score(d))
            for path, deg in (("uint8", deg_u8), ("float", deg_f)):
                if deg:
                    deg = np.asarray(deg)
                    rows.append({"kind": kind, "param": p, "level": level, "path": path, "n": len(deg),
                                 "family": family, "column": c,
                                 "pairwise_accuracy": pairwise_accuracy(clean[:, c], deg[:, c]),
                                 "gate_pairwise_accuracy": pairwise_accuracy(clean[:, 0], deg[:, 0]),
                                 "mean_score": float(deg[:, c].mean()), "scores": deg[:, c].tolist(),
                                 "gate_scores": deg[:, 0].tolist()})
    return {"clean_scores": clean.tolist(), "rows": rows}


def plot_strength(table: dict[str, Any], out: Path, floor: float | None = None) -> Path:
    """Score vs degradation strength, one panel per kind: clean band, mean ± sd per step, the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in table["rows"]}, key=list(EVAL_GRID).index)
    clean_all = np.asarray(table["clean_scores"])
    cols = 5
    fig, axes = plt.subplots((len(kinds) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.8 * ((len(kinds) + cols - 1) // cols)),
                             squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        first = next(r for r in table["rows"] if r["kind"] == kind)
        clean = clean_all[:, first["column"]]
        ax.axhspan(np.percentile(clean, 5), np.percentile(clean, 95), color="tab:green", alpha=0.2, label="clean 5–95 %")
        for path, style in (("uint8", "o-"), ("float", "s--")):
            rs = [r for r in table["rows"] if r["kind"] == kind and r["path"] == path]
            if rs:
                x = [r["param"] for r in rs]
                m = [np.mean(r["scores"]) for r in rs]
                sd = [np.std(r["scores"]) for r in rs]
                ax.errorbar(x, m, yerr=sd, fmt=style, capsize=3, label=f"degraded ({path})")
        if floor is not None:
            ax.axhline(floor, color="tab:red", lw=1, label="floor")
        if kind == "noise":
            ax.set_xscale("log")
        ax.set_title(f"{kind} ({first['family']})")
        ax.set_xlabel("strength")
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("quality score")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
