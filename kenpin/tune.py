"""``kenpin tune``: compare recipes on train/good alone — held-out good vs synthetic defects.

Recipe choices (input size, blocks, bank size) are made here, never on ``test/`` defects:

    kenpin tune --data ../shared/datasets/ball_screw --recipe configs/recipe.yaml configs/recipe_wide.yaml
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from export.build import fit_fp32, prepare_inputs
from training.recipe import load_recipe


def tune(data: Path, recipe_paths: list[str]) -> list[dict]:
    """fp32 validation figures of each recipe (same split and synthetic defects for all)."""
    rows = []
    for path in recipe_paths:
        r = load_recipe(path)
        t0 = time.perf_counter()
        inputs = prepare_inputs(data, r, probes=False)
        _, _, v = fit_fp32(inputs, r)
        rows.append({"recipe": path, "input": f"{r.preprocess.width}x{r.preprocess.height}",
                     "blocks": list(r.features.blocks), "bank": int(len(v.bank)),
                     "synthetic_auroc": v.synthetic_auroc, "synthetic_escape_rate": v.synthetic_escape_rate,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{path}: input {rows[-1]['input']}, blocks {rows[-1]['blocks']}, bank {rows[-1]['bank']}: "
              f"synthetic-defect AUROC {v.synthetic_auroc:.4f}, escapes at threshold {v.synthetic_escape_rate:.3f}",
              flush=True)
    return rows


def tune_reduction(data: Path, recipe_path: str, dims: list[int], methods: tuple[str, ...],
                   ridges: tuple[float, ...] = (1.0,), coreset_sizes: tuple[int, ...] = ()) -> list[dict]:
    """Validation figures of the recipe at each reduction dim (0 = full) and bank size, from one embedding pass.

    ``coreset_sizes`` empty: the recipe's own ``bank.coreset_size``."""
    from training.discriminant import paint_bank
    from training.fit import embed_all, torch_embed_fn
    from training.features import PatchEmbedder
    from training.reduction_sweep import sweep

    r = load_recipe(recipe_path)
    inputs = prepare_inputs(data, r, probes=False)
    embed = torch_embed_fn(PatchEmbedder(r.features).eval())
    maps = tuple(embed_all(embed, x, r.batch_size, what) for x, what in
                 ((inputs.bank, "bank"), (inputs.holdout, "held-out good"), (inputs.synthetic, "synthetic defects")))
    painted = (paint_bank(inputs.bank, r.preprocess, embed, r.batch_size, r.seed)
               if "discriminant" in methods else None)
    rows = sweep(maps, dims, coreset_sizes or (r.bank.coreset_size,), r.scoring.texture,
                 r.calibration.target_false_reject_rate, r.seed, methods, painted, ridges)
    print(f"{recipe_path} on {data} (validation: held-out good vs synthetic defects, never test/)")
    print("| dim | method | bank | variance kept | synthetic AUROC | escapes at threshold | search ms (1 thread) |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['dim']} | {row['method']} | {row['bank']} | {row['explained_variance']:.3f} | "
              f"{row['synthetic_auroc']:.4f} | {row['synthetic_escape_rate']:.3f} | {row['search_ms']:.2f} |", flush=True)
    return rows


def run_tune(data: Path, recipes: list[str], reduction_dims: list[int] | None = None,
             methods: tuple[str, ...] = ("pca",), ridges: tuple[float, ...] = (1.0,),
             coreset_sizes: tuple[int, ...] = ()) -> int:
    """Print each recipe's validation figures (with dims or bank sizes: one embedding pass per recipe); exit 0."""
    torch.set_num_threads(2)
    if reduction_dims or coreset_sizes:
        for path in recipes:
            tune_reduction(data, path, reduction_dims or [0], methods, ridges, coreset_sizes)
    else:
        tune(data, recipes)
    return 0
