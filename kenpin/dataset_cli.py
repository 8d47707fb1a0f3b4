"""``kenpin tune`` and ``kenpin split-defects``: the commands that judge recipes and prepare datasets.

    kenpin tune --data DIR --recipe R [R ...] [--reduction-dims 0 64 128] [--coreset-sizes 1000 2000 4000]
    kenpin split-defects --data DIR --per-type K --seed S --out NEW
"""
from __future__ import annotations

import argparse
from pathlib import Path

from device.errors import KenpinError


def cmd_tune(args: argparse.Namespace) -> int:
    from kenpin.tune import run_tune

    if any(n < 1 for n in args.coreset_sizes or ()):
        raise KenpinError(f"--coreset-sizes {' '.join(map(str, args.coreset_sizes))}: each bank size must be "
                          "at least 1 (bank.coreset_size)")
    return run_tune(Path(args.data), args.recipe, args.reduction_dims, tuple(args.reduction_methods),
                    tuple(args.ridges), tuple(args.coreset_sizes or ()))


def cmd_split_defects(args: argparse.Namespace) -> int:
    from training.split_defects import SplitSpec, split_defects

    rec = split_defects(Path(args.data), Path(args.out), SplitSpec(args.per_type, args.seed))
    moved = ", ".join(f"{d} {len(v)}" for d, v in rec["moved_to_train"].items())
    print(f"{args.out}: train/<defect>/ holds {moved or 'nothing'} (seed {args.seed}); test/ keeps "
          + ", ".join(f"{d} {n}" for d, n in rec["left_in_test"].items()) + "; report on test/ only")
    return 0


def add_recipes_and_datasets(sub: argparse._SubParsersAction) -> None:
    """`kenpin tune` and `kenpin split-defects`."""
    u = sub.add_parser("tune", help="compare recipes on held-out good vs synthetic defects (never test/)")
    u.add_argument("--data", required=True)
    u.add_argument("--recipe", nargs="+", required=True, help="recipe YAML files to compare")
    u.add_argument("--reduction-dims", type=int, nargs="+", metavar="DIM",
                   help="instead: each recipe at these reduction.dim values (0 = full), one embedding pass")
    u.add_argument("--reduction-methods", nargs="+", default=["pca"],
                   choices=["pca", "whiten", "residual", "discriminant"],
                   help="with --reduction-dims: PCA, whitened PCA, PCA + the residual distance as a channel, or "
                        "the directions where synthetic defects on bank images leave their nearest good patch")
    u.add_argument("--ridges", type=float, nargs="+", default=[1.0],
                   help="with the discriminant method: reduction.ridge values to try (each a row)")
    u.add_argument("--coreset-sizes", type=int, nargs="+", metavar="N",
                   help="instead: each recipe at these bank.coreset_size values (with --reduction-dims, at each "
                        "dim), one embedding pass and one coreset selection")
    u.set_defaults(func=cmd_tune)

    sd = sub.add_parser("split-defects", help="a new dataset folder (links) with K defective images per type "
                                              "moved from test/ to train/<defect>/, masks with them")
    sd.add_argument("--data", required=True, help="MVTec-layout dataset folder (read only)")
    sd.add_argument("--per-type", type=int, required=True, help="defective images moved per defect type (K)")
    sd.add_argument("--seed", type=int, default=0, help="seed of the pick")
    sd.add_argument("--out", required=True, help="new dataset folder to create (must not exist)")
    sd.set_defaults(func=cmd_split_defects)
