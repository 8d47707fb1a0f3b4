"""``kenpin eval``: score an MVTec ``test/`` folder with a bundle, the way the station would."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from device.errors import ImageError
from device.images import read_rgb
from device.runtime import Inspector
from training.aupro import aupro
from training.dataset import TestImage, scan_mvtec

log = logging.getLogger(__name__)

# Pixel AUROC is computed on maps shrunk to this longest side: same ranking, far less memory.
_PIXEL_SIDE = 256


@dataclass
class Scored:
    """Everything eval keeps about one test image."""

    item: TestImage
    raw: float
    score: float
    verdict: str
    embedding: np.ndarray
    heatmap: np.ndarray  # small, for plots and pixel AUROC
    mask: np.ndarray | None


@dataclass
class Evaluation:
    """Scored test images plus the bundle's threshold."""

    results: list[Scored]
    raw_threshold: float
    precision: str
    bundle_id: str
    skipped: list[str] = field(default_factory=list)
    # raw threshold at the operating point (OPERATING_FRR of held-out good images), and where it came from
    operating_threshold: float | None = None
    operating_source: str = ""


# The false-reject budget a line runs at by default: every evaluation reports the escapes there.
OPERATING_FRR = 0.01


def operating_threshold(inspector: Inspector) -> tuple[float | None, str]:
    """The raw threshold at OPERATING_FRR from the bundle's held-out good scores (never test/)."""
    v = inspector.variant
    t = v.threshold_at(OPERATING_FRR)
    if t is not None:
        return t, f"held-out good images ({len(v.holdout_scores)}), quantile at {1 - OPERATING_FRR:g}"
    target = inspector.bundle.manifest.get("calibration", {}).get("target_false_reject_rate")
    if target == OPERATING_FRR:
        return v.normalization.threshold, "the bundle's threshold (calibrated at the same budget)"
    return None, "the bundle records no held-out good scores (exported before they were kept)"


def _small(a: np.ndarray, interpolation: int) -> np.ndarray:
    h, w = a.shape[:2]
    f = min(1.0, _PIXEL_SIDE / max(h, w))
    return cv2.resize(a, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interpolation)


def _read_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    if path is None:
        return np.zeros(shape, np.uint8)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ImageError(f"{path}: mask is not a readable image")
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (m > 127).astype(np.uint8)


def score_test_set(inspector: Inspector, data_dir: Path) -> Evaluation:
    """Run every ``test/`` image through the station path; unreadable ones are skipped and named."""
    ds = scan_mvtec(data_dir, need_test=True)
    results, skipped = [], []
    for item in tqdm(ds.test, desc="scoring test/", unit="img"):
        try:
            rgb = read_rgb(item.path)
        except ImageError as e:
            skipped.append(str(e))
            continue
        patches = inspector.embed(rgb)
        v = inspector.judge(rgb, patches, heat="always")
        worst = patches[int(np.argmax(v.distances))]
        has_mask = item.is_defective and item.mask is not None
        mask = _small(_read_mask(item.mask, rgb.shape[:2]), cv2.INTER_NEAREST) if has_mask or not item.is_defective else None
        results.append(Scored(item, v.raw_score, v.score, v.verdict, worst, _small(v.heatmap, cv2.INTER_AREA), mask))
    if skipped:
        log.warning("skipped %d unreadable test image(s): %s", len(skipped), "; ".join(skipped[:10]))
    return Evaluation(results, inspector.variant.normalization.threshold, inspector.variant.name,
                      inspector.bundle.bundle_id, skipped, *operating_threshold(inspector))


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def _operating_point(ev: Evaluation, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """Escapes and false rejects on test/ at the OPERATING_FRR threshold set on held-out good."""
    t = ev.operating_threshold
    out: dict[str, Any] = {"target_false_reject_rate": OPERATING_FRR, "threshold_from": ev.operating_source,
                           "raw_threshold": t, "false_reject_rate": None, "escape_rate": None}
    if t is not None:
        out.update(false_reject_rate=float(np.mean(s[~y] > t)), escape_rate=float(np.mean(s[y] <= t)))
    return out


def escapes_at_test_frr(y: np.ndarray, s: np.ndarray, frr: float = OPERATING_FRR) -> float | None:
    """Escapes with the threshold where at most ``frr`` of test/good is rejected: for comparing bundles
    without the held-out threshold's noise (it sets no threshold a station uses)."""
    good, bad = np.sort(s[~y]), s[y]
    if not len(good) or not len(bad):
        return None
    t = good[max(int(math.ceil((1 - frr) * len(good))) - 1, 0)]
    return float(np.mean(bad <= t))


def auroc_standard_error(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC from ``n_pos`` defective and ``n_neg`` good images."""
    a = min(max(auroc, 1e-9), 1 - 1e-9)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def metrics(ev: Evaluation) -> dict[str, Any]:
    """Image/pixel AUROC, pixel AUPRO, per-defect AUROC, false-reject and escape rates at the bundle's
    threshold and at the operating point (OPERATING_FRR on held-out good)."""
    y = np.array([r.item.is_defective for r in ev.results])
    s = np.array([r.raw for r in ev.results])
    flagged = s > ev.raw_threshold
    per_defect = {}
    for d in sorted({r.item.defect for r in ev.results if r.item.is_defective}):
        sel = np.array([r.item.defect in ("good", d) for r in ev.results])
        dd = np.array([r.item.defect == d for r in ev.results])
        per_defect[d] = {"auroc": _auroc(y[sel], s[sel]), "n": int(dd.sum()), "escape_rate": float(np.mean(~flagged[dd]))}
    with_mask = [r for r in ev.results if r.mask is not None]
    pixel = pro = None
    if any(r.item.is_defective for r in with_mask):
        labels = np.concatenate([r.mask.ravel() for r in with_mask])
        pixel = _auroc(labels, np.concatenate([r.heatmap.ravel() for r in with_mask]))
        pro = aupro([r.heatmap for r in with_mask], [r.mask for r in with_mask])
    return {
        "image_auroc": _auroc(y, s),
        "pixel_auroc": pixel,
        "pixel_aupro": pro,
        "operating_point": _operating_point(ev, y, s),
        "escapes_at_test_frr": escapes_at_test_frr(y, s),
        "false_reject_rate": float(np.mean(flagged[~y])),
        "escape_rate": float(np.mean(~flagged[y])),
        "per_defect": per_defect,
        "verdicts": {
            "good": {"ok": int((~flagged[~y]).sum()), "defect": int(flagged[~y].sum())},
            "defective": {"ok": int((~flagged[y]).sum()), "defect": int(flagged[y].sum())},
        },
        "n_good": int((~y).sum()),
        "n_defective": int(y.sum()),
        "n_skipped": len(ev.skipped),
        "raw_threshold": ev.raw_threshold,
        "precision": ev.precision,
        "bundle_id": ev.bundle_id,
        "images": [{"path": str(r.item.path), "defect": r.item.defect, "score": r.score, "raw_score": r.raw,
                    "verdict": r.verdict} for r in ev.results],
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
