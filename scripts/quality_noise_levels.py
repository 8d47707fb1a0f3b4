"""Noise ranking of a bundle's quality gate level by level, on its own held-out train/good images.

The export validation averages the noise family over training strengths; this scores the 20 %
of train/good images ``kenpin train-ranker`` held out (same seed, same split) clean and at each
noise σ given, 8-bit path, and prints the same-image pairwise accuracy on the noise family's
score (the gate's score for a single-score gate). Never reads ``test/``.

    .venv/bin/python scripts/quality_noise_levels.py BUNDLE ../shared/datasets/magnetic_tile [--sigmas 0.0007,0.001,0.0015,0.003]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from device.bundle import load_bundle
from device.quality import QualityGate
from training.rank.degrade import degrade, to_float, to_uint8
from training.rank.metrics import pairwise_accuracy
from training.rank.recipe import QualitySpec
from training.rank.train import good_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--sigmas", default="0.0007,0.001,0.0015,0.003")
    ap.add_argument("--seed", type=int, default=0, help="the ranker recipe's seed (its hold-out split)")
    args = ap.parse_args()
    gate = QualityGate.from_bundle(load_bundle(args.bundle))
    if gate is None:
        raise SystemExit(f"{args.bundle}: no quality model")
    spec = QualitySpec()  # the default images / holdout_fraction: the split train-ranker made
    _, hold = good_split(args.data, spec, args.seed)
    col = gate.families.index("noise") if "noise" in gate.families else None
    score = (lambda f: gate.family_scores(f)[col]) if col is not None else gate.score
    gray = [im[..., 0] for im in hold]
    clean = np.array([score(g) for g in gray])
    rng = np.random.default_rng(4321)
    print(f"{args.bundle}: {len(gray)} held-out train/good images, noise family column {col}")
    for s in (float(x) for x in args.sigmas.split(",")):
        noisy = np.array([score(to_uint8(degrade(to_float(g), "noise", s, rng))) for g in gray])
        print(f"  σ {s:<7g} pairwise accuracy {pairwise_accuracy(clean, noisy):.3f}")


if __name__ == "__main__":
    main()
