"""Few-shot recipes judged on the good images they did not get (never ``test/``).

A recipe with ``train_images: N`` fits its bank on N of ``DATA/train/good``; its own held-out
split is then a handful of images, too few to choose settings with. This builds each recipe's
bundle and scores up to ``--images`` of the *other* train/good images, clean and with one
synthetic defect painted on each (the validation painters of ``kenpin train``), with the int8
station runtime: image AUROC of clean vs painted.

    .venv/bin/python scripts/fewshot_validate.py ../shared/datasets/magnetic_tile RECIPE.yaml [RECIPE.yaml ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from device.runtime import Inspector
from export.build import build_bundle
from export.parity import ParityError
from training.dataset import read_many, scan_mvtec
from training.fit import few_shot_pick, synthetic_defects
from training.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--images", type=int, default=100, help="validation images (of those not trained on)")
    ap.add_argument("--workdir", type=Path, default=Path("fewshot-run"))
    args = ap.parse_args()
    images, _ = read_many(scan_mvtec(args.data).train_good, desc="reading train/good")
    results = {}
    for path in args.recipes:
        recipe = load_recipe(path)
        if not recipe.train_images:
            raise SystemExit(f"{path}: train_images is 0 (all); this validates few-shot recipes only")
        taken = set(few_shot_pick(len(images), recipe.train_images, recipe.seed).tolist())
        rest = [i for i in range(len(images)) if i not in taken]
        pick = np.random.default_rng(12345).permutation(rest)[: args.images]
        good = [images[i] for i in pick]
        bad = synthetic_defects(good, 1, 12345)
        out = args.workdir / Path(path).stem
        try:
            build_bundle(args.data, out, recipe)
        except ParityError as e:  # a variant int8 cannot carry is a result too; go on with the next
            results[path] = {"train_images": recipe.train_images, "error": str(e)}
            print(f"{path}: no int8 bundle: {e}", flush=True)
            continue
        insp = Inspector.open(out, "int8", 2)
        scores = [insp.inspect(im).raw_score for im in tqdm(good + bad, desc="validating", unit="img", leave=False)]
        auroc = float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(bad))], scores))
        results[path] = {"train_images": recipe.train_images, "validation_images": len(good), "auroc_int8": auroc}
        print(f"{path}: train_images {recipe.train_images}, validation AUROC (int8, {len(good)} other good "
              f"+ {len(bad)} painted) {auroc:.4f}", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "fewshot.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
