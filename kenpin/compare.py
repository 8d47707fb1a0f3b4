"""``kenpin compare``: frozen vs metric-learned embedder on one dataset, in one run.

Builds the frozen bundle, trains the embedder (model selection on validation only), builds the
trained bundle through the same export path, and scores both int8 bundles on the same ``test/``
images (figures, per-defect AUROC, embedding map before and after)::

    kenpin compare --data ../shared/datasets/magnetic_tile --recipe configs/recipe_tile_metric.yaml
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from kenpin.pipeline import evaluate_and_report, train_and_report, train_embedding_and_report
from training.recipe import load_recipe


def run_compare(data: Path, recipe_path: str | None, workdir: Path, train_images: int | None, resume: bool) -> int:
    """Run the comparison in ``workdir``; exit status 0 when both bundles were evaluated."""
    t0 = time.perf_counter()
    recipe = load_recipe(recipe_path)
    if train_images is not None:
        recipe = replace(recipe, train_images=train_images)
    workdir.mkdir(parents=True, exist_ok=True)
    print("[1/4] frozen embedder → int8 bundle", flush=True)
    train_and_report(data, workdir / "frozen", recipe)
    print("[2/4] metric learning of the embedder", flush=True)
    s = train_embedding_and_report(data, workdir / "embedding", recipe, resume)
    print("[3/4] trained embedder → int8 bundle (bank and threshold rebuilt)", flush=True)
    train_and_report(data, workdir / "trained", recipe, workdir / "embedding" / "embedder.pt")
    print("[4/4] both int8 bundles on the same test/ images", flush=True)
    m = evaluate_and_report(workdir / "trained", data, "int8", workdir / "compare.json", workdir / "report",
                            compare=workdir / "frozen")
    m["training"] = s
    m["seconds"] = round(time.perf_counter() - t0, 1)
    (workdir / "compare.json").write_text(json.dumps(m, indent=2) + "\n")
    print(f"compare finished in {m['seconds']:.0f} s: {workdir / 'compare.json'}")
    return 0
