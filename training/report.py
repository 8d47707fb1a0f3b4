"""Evaluation plots: ROC, score histogram with the threshold, worst misses, embedding map."""
from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # headless: reports are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from device.images import read_rgb  # noqa: E402
from training.evaluate import Evaluation, Scored  # noqa: E402


def _labels_scores(ev: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.item.is_defective for r in ev.results]), np.array([r.raw for r in ev.results]))


def plot_roc(ev: Evaluation, auroc: float, path: Path) -> None:
    """ROC curve with the operating point of the calibrated threshold marked."""
    y, s = _labels_scores(ev)
    fpr, tpr, _ = roc_curve(y, s)
    op = (np.mean(s[~y] > ev.raw_threshold), np.mean(s[y] > ev.raw_threshold))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"{ev.precision} AUROC {auroc:.4f}")
    ax.plot(*op, "o", color="crimson", label=f"threshold: FRR {op[0]:.3f}, catch {op[1]:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-reject rate (good parts flagged)", ylabel="defects caught", title="ROC, image level")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_histogram(ev: Evaluation, path: Path) -> None:
    """Score histogram of good vs each defect type, with the threshold line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted({r.item.defect for r in ev.results}, key=lambda d: (d != "good", d))
    all_s = np.array([r.raw for r in ev.results])
    bins = np.linspace(all_s.min(), all_s.max(), 50)
    for d in groups:
        ax.hist([r.raw for r in ev.results if r.item.defect == d], bins=bins, alpha=0.55, label=d)
    ax.axvline(ev.raw_threshold, color="crimson", lw=2, label="threshold")
    ax.set(xlabel="anomaly score (raw distance)", ylabel="images", title="Score distribution")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _overlay(r: Scored, hm_max: float) -> np.ndarray:
    rgb = read_rgb(r.item.path)
    hm = cv2.resize(r.heatmap, (rgb.shape[1], rgb.shape[0]))
    colour = cv2.applyColorMap(np.uint8(np.clip(hm / hm_max, 0, 1) * 255), cv2.COLORMAP_JET)
    out = cv2.addWeighted(rgb, 0.6, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), 0.4, 0)
    if r.mask is not None and r.mask.any():
        m = cv2.resize(r.mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, rgb.shape[0] // 150))
    return out


def plot_worst(ev: Evaluation, path: Path, n: int = 6) -> None:
    """Heat-map overlays of the lowest-scoring defects and highest-scoring good parts."""
    defects = sorted((r for r in ev.results if r.item.is_defective), key=lambda r: r.raw)[:n]
    goods = sorted((r for r in ev.results if not r.item.is_defective), key=lambda r: -r.raw)[:n]
    rows = [("missed / weakest defects", defects), ("good parts scored highest", goods)]
    hm_max = max(float(np.percentile([r.heatmap.max() for r in ev.results], 95)), 1e-6)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 6), squeeze=False)
    for row, (title, items) in enumerate(rows):
        for col in range(n):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(items):
                r = items[col]
                ax.imshow(_overlay(r, hm_max))
                flag = "MISS" if r.item.is_defective and r.verdict == "ok" else ("FALSE REJECT" if not r.item.is_defective and r.verdict == "defect" else r.verdict)
                ax.set_title(f"{r.item.defect}: {r.score:.2f} {flag}\n{r.item.path.name}", fontsize=7)
        axes[row][0].text(-0.1, 0.5, title, transform=axes[row][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("Heat maps (white outline: ground-truth defect); score 0–1, threshold 0.5")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _embedding_panels(ev: Evaluation, axes: list, label: str, seed: int) -> None:
    """PCA and t-SNE of each image's most anomalous patch embedding on two axes."""
    x = np.stack([r.embedding for r in ev.results])
    kinds = [r.item.defect for r in ev.results]
    pca = PCA(n_components=2, random_state=seed).fit_transform(x)
    x50 = PCA(n_components=min(50, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(30, max(5, len(x) // 4)), random_state=seed, init="pca").fit_transform(x50)
    for ax, pts, name in ((axes[0], pca, "PCA"), (axes[1], tsne, "t-SNE")):
        for d in sorted(set(kinds), key=lambda d: (d != "good", d)):
            sel = np.array([k == d for k in kinds])
            ax.scatter(pts[sel, 0], pts[sel, 1], s=8, alpha=0.7, label=d, c="black" if d == "good" else None)
        ax.set_title(f"{label}{name} of the most anomalous patch embedding per image", fontsize=9)
    axes[1].legend(markerscale=2, fontsize=8)


def plot_embeddings(ev: Evaluation, path: Path, seed: int = 0) -> None:
    """PCA and t-SNE of each image's most anomalous patch embedding, good vs defective."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    _embedding_panels(ev, list(axes), "", seed)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_embeddings_before_after(before: Evaluation, after: Evaluation, names: tuple[str, str], path: Path,
                                 seed: int = 0) -> None:
    """The embedding map of two bundles on the same test images, one row each."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    for row, (ev, name) in enumerate(zip((before, after), names)):
        _embedding_panels(ev, list(axes[row]), f"{name}: ", seed)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(ev: Evaluation, m: dict, out: Path) -> dict[str, str]:
    """All plots into ``out``; returns name → file."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"roc": out / "roc.png", "histogram": out / "score_histogram.png",
             "worst": out / "worst_misses.png", "embeddings": out / "embeddings.png"}
    plot_roc(ev, m["image_auroc"], files["roc"])
    plot_histogram(ev, files["histogram"])
    plot_worst(ev, files["worst"])
    plot_embeddings(ev, files["embeddings"])
    return {k: str(v) for k, v in files.items()}


def plot_training_curve(history: list[dict], path: Path) -> None:
    """Metric-learning loss per step and validation AUROC per validation, one figure."""
    steps = [(h["step"], h["loss"]) for h in history if "loss" in h]
    vals = [(h["step"], h["val_auroc"]) for h in history if "val_auroc" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        s, loss = np.array(steps).T
        ax.plot(s, loss, lw=0.6, alpha=0.4, color="tab:blue")
        k = max(1, len(loss) // 30)  # running mean: single batches are noisy
        ax.plot(s[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), color="tab:blue", label="loss")
    ax.set(xlabel="step", ylabel="training loss")
    ax2 = ax.twinx()
    if vals:
        ax2.plot(*np.array(vals).T, "o-", color="tab:red", label="validation AUROC")
    ax2.set_ylabel("validation AUROC (held-out good vs synthetic defects)")
    fig.legend(loc="upper center", ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
