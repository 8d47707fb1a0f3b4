"""What the station benchmarks run on when no bundle is given: a generated line and a bundle trained on it.

``kenpin bench durability`` and ``kenpin bench dashboard`` without --bundle/--replay make these
first (they need the training extra). The tiny line and recipe are also the tests' own
(``tests/conftest.py``): small enough for a bundle in about a minute on a CPU.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_recipe():
    """A recipe small enough for tests: 128 px, small bank, one int8 calibrator."""
    from device.preprocess import Preprocess
    from training.recipe import BankSpec, Recipe

    r = Recipe()
    return replace(r, preprocess=Preprocess(128, 128), bank=BankSpec(coreset_size=300),
                   export=replace(r.export, quant_methods=("MinMax",), quant_images=8), batch_size=8)


def tiny_line_spec():
    from training.synthetic_line import LineSpec

    return LineSpec(seed=3, size=160, n_train=30, n_test_good=8, n_test_per_defect=2)


def tiny_line_and_bundle(workdir: Path) -> tuple[Path, Path]:
    """(bundle, line): the tiny line generated into WORKDIR/line, the tiny recipe's bundle in WORKDIR/bundle (reused)."""
    from export.build import build_bundle
    from training.synthetic_line import generate_line

    line, bundle = generate_line(workdir / "line", tiny_line_spec()), workdir / "bundle"
    if not (bundle / "manifest.json").exists():
        build_bundle(line, bundle, tiny_recipe())
    return bundle, line


TINY_RANKER_RECIPE = """
quality:
  input: {size: 32, crops: 2, stats: true}
  images: 0
  holdout_fraction: 0.4
  train: {steps: 300, batch_pairs: 16, width: 8}
export:
  quant_images: 16
  quant_methods: [MinMax]
"""  # the tests' tiny quality gate: seconds to train, enough to tell a clean frame from a ruined one


def tiny_gated_bundle(workdir: Path) -> tuple[Path, Path]:
    """(bundle, line): the tiny line's bundle with a quality gate trained on the line, in WORKDIR/gated (reused)."""
    import json
    import shutil

    from training.rank.recipe import load_ranker_recipe
    from training.rank.train import train_quality

    bundle, line = tiny_line_and_bundle(workdir)
    gated, manifest = workdir / "gated", workdir / "gated" / "manifest.json"
    if not manifest.exists() or "quality" not in json.loads(manifest.read_text()).get("rankers", {}):
        shutil.rmtree(gated, ignore_errors=True)
        shutil.copytree(bundle, gated)
        recipe = workdir / "ranker-recipe.yaml"
        recipe.write_text(TINY_RANKER_RECIPE)
        train_quality(line, gated, load_ranker_recipe(recipe))
    return gated, line


def sample_line_and_bundle(workdir: Path) -> tuple[Path, Path]:
    """(bundle, line): a generated line and a bundle of the default recipe (224 px) in WORKDIR (both reused)."""
    from training.synthetic_line import LineSpec, generate_line

    line, bundle = workdir / "line", workdir / "bundle"
    if not (line / "train" / "good").is_dir():
        generate_line(line, LineSpec(seed=1, n_train=60, n_test_good=24, n_test_per_defect=4))
    if not (bundle / "manifest.json").is_file():
        from export.build import build_bundle
        from training.recipe import load_recipe

        build_bundle(line, bundle, load_recipe(ROOT / "configs" / "recipe.yaml"))
    return bundle, line
