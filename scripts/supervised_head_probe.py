"""Probe (issue 18, Build 1): does a small supervised head on a bundle's bank distances catch more
of the line's defects than the bundle's own score, at the same false-reject target?

The head is a logistic regression on per-image features of the station's own scoring (worst-patch
and texture z, the mean of the top-k patch distances, the share of patches above the heat floor,
the spread of the patch distances), fitted on the bundle's held-out good images (the ones its
threshold came from; never in its bank) against the real defects in ``DATA/train/<defect>/``
(``kenpin split-defects``). Its threshold comes from out-of-fold scores of those held-out good
images at 1 % false rejects. Both are then scored once on ``DATA/test/``: nothing is chosen there.

    .venv/bin/python scripts/supervised_head_probe.py --bundle B --data DATA_WITH_TRAIN_DEFECTS
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from device.calibrate import calibrate
from device.images import read_rgb
from device.runtime import Inspector
from training.dataset import scan_mvtec
from training.evaluate import escapes_at_test_frr
from training.fit import read_good_split
from training.metric.pair_sampling import labeled_defects

TOP_K = (3, 10, 30)
FRR = 0.01


def features(insp: Inspector, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(the head's features, the bundle's own raw score) of one frame."""
    worst, tex, d = insp.image_scorer.parts(insp.embed(rgb))
    v = insp.variant
    f = v.fusion
    pm, ps = (f.patch_mean, f.patch_std) if f is not None else (float(np.mean(d)), float(np.std(d)) or 1.0)
    top = np.sort(d)[::-1]
    row = [(worst - pm) / ps] + [(top[:k].mean() - pm) / ps for k in TOP_K]
    row += [float(np.mean(d > (v.heat_floor or np.quantile(d, 0.99)))), float(np.std(d)) / ps]
    if tex is not None and f is not None:
        row.append((tex - f.texture_mean) / f.texture_std)
    raw = worst if f is None else f(worst, tex)
    return np.asarray(row, np.float64), float(raw)


def score_all(insp: Inspector, images: list[np.ndarray], desc: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [features(insp, im) for im in tqdm(images, desc=desc, unit="img", leave=False)]
    return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])


def threshold_at(good_scores: np.ndarray, frr: float = FRR) -> float:
    """The threshold at ``frr`` false rejects of these good images, by the bundles' own rule."""
    return calibrate(good_scores, frr).threshold


def out_of_fold(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Each training image's head score from a head fitted without it (5 folds)."""
    oof = np.zeros(len(y))
    for fit_idx, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        oof[held] = head().fit(x[fit_idx], y[fit_idx]).decision_function(x[held])
    return oof


def head():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))


def report(name: str, y: np.ndarray, s: np.ndarray, t: float) -> dict[str, float]:
    r = {"auroc": float(roc_auc_score(y, s)), "escapes": float(np.mean(s[y] <= t)),
         "false_rejects": float(np.mean(s[~y] > t)), "escapes_at_1pct_test_frr": escapes_at_test_frr(y, s)}
    print(f"{name:34s} AUROC {r['auroc']:.4f}  escapes {r['escapes']:.3f} (FRR {r['false_rejects']:.3f})  "
          f"at 1% test FRR {r['escapes_at_1pct_test_frr']:.3f}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="dataset with real defects in train/<defect>/")
    ap.add_argument("--variant", default="int8-w8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    insp = Inspector.open(args.bundle, args.variant, threads=2)
    recipe = insp.bundle.manifest["recipe"]
    seed = int(recipe.get("seed", 0))
    split = read_good_split(args.data, int(recipe.get("train_images", 0)),
                            float(recipe["calibration"]["holdout_fraction"]), seed)
    ds = scan_mvtec(args.data, need_test=True)
    defects = [d.image for d in labeled_defects(args.data)]
    xg, raw_g = score_all(insp, split.holdout, "held-out good")
    xd, _ = score_all(insp, defects, "train defects")
    x, y = np.vstack([xg, xd]), np.r_[np.zeros(len(xg)), np.ones(len(xd))].astype(bool)
    oof = out_of_fold(x, y, seed)
    t_head = threshold_at(oof[~y])
    final = head().fit(x, y)
    print(f"head: {len(xg)} held-out good, {len(xd)} real train defects; out-of-fold AUROC "
          f"{roc_auc_score(y, oof):.4f}")
    test = [(read_rgb(it.path), it.is_defective) for it in ds.test]
    xt, raw_t = score_all(insp, [im for im, _ in test], "test")
    yt = np.array([d for _, d in test])
    out = {"bundle": report("bundle score, held-out threshold", yt, raw_t, threshold_at(raw_g)),
           "head": report("supervised head, held-out threshold", yt, final.decision_function(xt), t_head)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
