#!/usr/bin/env python3
"""Compare image-score rules on one set of fp32 feature maps: validation decides, test is reported.

    .venv/bin/python scripts/score_variants.py --data ../shared/datasets/magnetic_tile \
        --recipe configs/recipe_tile.yaml --cache score-cache/magnetic_tile

Feature maps of the recipe's frozen embedder are computed once (cached as float16 .npy) for: the
bank and held-out split of train/good exactly as ``kenpin train`` makes it, two local painted
defects per held-out image (``defect_negative``), two area-wide ones (``paint_area_defect``) and
test/. Each rule is then scored on validation (held-out good vs local, area-wide, and both) and
on test. The rule to ship is the one with the best *mixed validation* AUROC; the test column is
printed for the record only and must not be used to choose.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.scoring import NearestNeighbourScorer, texture_descriptor  # noqa: E402
from training.fit import flatten_patches  # noqa: E402


def _maps(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Feature maps per split, from the cache or computed (and cached)."""
    import torch

    from training.area_defects import paint_area_defect
    from training.dataset import read_many, scan_mvtec, stack_inputs
    from training.features import PatchEmbedder
    from training.fit import embed_all, read_good_split, torch_embed_fn
    from training.metric.pair_sampling import defect_negative
    from training.recipe import load_recipe

    cache = Path(args.cache)
    names = ("bank", "holdout", "local", "area", "test")
    if all((cache / f"{n}.npy").is_file() for n in names):
        return {n: np.load(cache / f"{n}.npy").astype(np.float32) for n in names}
    torch.set_num_threads(2)
    recipe = load_recipe(args.recipe)
    split = read_good_split(Path(args.data), 0, recipe.calibration.holdout_fraction, recipe.seed)
    rng_local, rng_area = np.random.default_rng(12345), np.random.default_rng(777)
    local = [defect_negative(im, rng_local, 1.0, donors=split.bank[:50])[0] for im in split.holdout for _ in range(2)]
    area = [paint_area_defect(im, rng_area)[0] for im in split.holdout for _ in range(2)]
    ds = scan_mvtec(Path(args.data), need_test=True)
    test, _ = read_many([t.path for t in ds.test], "test")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "test_labels.npy", np.array([t.is_defective for t in ds.test]))
    np.save(cache / "test_types.npy", np.array([t.defect for t in ds.test]))
    embed = torch_embed_fn(PatchEmbedder(recipe.features).eval())
    out = {}
    for name, images in zip(names, (split.bank, split.holdout, local, area, test)):
        out[name] = embed_all(embed, stack_inputs(images, recipe.preprocess), 8, name)
        np.save(cache / f"{name}.npy", out[name].astype(np.float16))
    return out


def _per_image(maps: np.ndarray, fn) -> np.ndarray:
    n, c = maps.shape[:2]
    return np.array([fn(np.ascontiguousarray(m.reshape(c, -1).T)) for m in maps])


def rules(maps: dict[str, np.ndarray], coreset: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Raw scores of every rule on every evaluated split."""
    from sklearn.covariance import LedoitWolf

    splits = ("holdout", "local", "area", "test")
    nn = NearestNeighbourScorer(flatten_patches(maps["bank"])[coreset])
    patch = {s: _per_image(maps[s], nn.distances) for s in splits}
    out: dict[str, dict[str, np.ndarray]] = {
        "patch max": {s: p.max(1) for s, p in patch.items()},
        "patch top-5 mean": {s: np.sort(p, 1)[:, -5:].mean(1) for s, p in patch.items()},
    }
    desc = {s: _per_image(maps[s], texture_descriptor) for s in ("bank", *splits)}
    lw = LedoitWolf().fit(desc["bank"])
    mean_only = {s: d[:, : d.shape[1] // 2] for s, d in desc.items()}
    lw_mean = LedoitWolf().fit(mean_only["bank"])
    out["texture (mean+std) Mahalanobis"] = {s: np.sqrt(lw.mahalanobis(desc[s])) for s in splits}
    out["mean embedding Mahalanobis"] = {s: np.sqrt(lw_mean.mahalanobis(mean_only[s])) for s in splits}

    def z(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m, sd = scores["holdout"].mean(), scores["holdout"].std() + 1e-12
        return {s: (v - m) / sd for s, v in scores.items()}

    for g in ("texture (mean+std) Mahalanobis", "mean embedding Mahalanobis"):
        a, b = z(out["patch max"]), z(out[g])
        out[f"max(z patch, z {g.split(' Mah')[0]})"] = {s: np.maximum(a[s], b[s]) for s in splits}
        out[f"sum(z patch, z {g.split(' Mah')[0]})"] = {s: a[s] + b[s] for s in splits}
    return out


def main() -> int:
    from sklearn.metrics import roc_auc_score

    from training.coreset import greedy_coreset
    from training.recipe import load_recipe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--cache", required=True, help="folder for the cached feature maps")
    args = p.parse_args()
    maps = _maps(args)
    recipe = load_recipe(args.recipe)
    cfile = Path(args.cache) / f"coreset{recipe.bank.coreset_size}.npy"
    if not cfile.is_file():
        np.save(cfile, greedy_coreset(flatten_patches(maps["bank"]), recipe.bank.coreset_size,
                                      recipe.bank.projection_dim, recipe.seed))
    scored = rules(maps, np.load(cfile))
    y = np.load(Path(args.cache) / "test_labels.npy")
    types = np.load(Path(args.cache) / "test_types.npy")

    def val(s: dict[str, np.ndarray], neg: np.ndarray) -> float:
        return roc_auc_score(np.r_[np.zeros(len(s["holdout"])), np.ones(len(neg))], np.r_[s["holdout"], neg])

    print("| rule | val local | val area-wide | **val mixed** (decides) | test AUROC (report only) | test per defect |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, s in scored.items():
        vm = val(s, np.r_[s["local"], s["area"]])
        per = " ".join(f"{t} {roc_auc_score(y[(types == t) | ~y], s['test'][(types == t) | ~y]):.3f}"
                       for t in sorted(set(types[y])))
        rows.append((vm, f"| {name} | {val(s, s['local']):.4f} | {val(s, s['area']):.4f} | {vm:.4f} | "
                         f"{roc_auc_score(y, s['test']):.4f} | {per} |"))
    for _, row in rows:
        print(row)
    print(f"\nchosen by mixed validation: {max(rows)[1].split('|')[1].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
