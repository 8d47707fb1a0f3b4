"""Probe (deleted after its run; BENCHMARKS.md cites its commit): would the anomaly model's own patch-distance map tell capture flips from defects?
Calibration frames only (the anomaly bundle's held-out train/good + synthetic defects), as train-ranker builds them."""
import sys, numpy as np
from pathlib import Path
from device.bundle import load_bundle
from device.runtime import Inspector, distance_unit
from training.rank.recipe import RankerRecipe
from training.rank.train import good_split, bundle_recipe
from training.rank.pairs import build_quality_pool
from training.fit import synthetic_defects
from training.rank.flips import flipped, outcome
from sklearn.linear_model import LogisticRegression
from sklearn.ensemble import GradientBoostingClassifier

bundle, data = Path(sys.argv[1]), Path(sys.argv[2])  # a gated bundle and its dataset
b = load_bundle(bundle); rec = RankerRecipe(); spec = rec.quality
split = good_split(data, spec, bundle_recipe(b), rec.seed)
insp = Inspector(b, "int8", 2, rankers=True)
unit = float(distance_unit(insp.variant)); scale = insp.variant.normalization.scale
feats = []
def judge(rgb):
    v = insp.judge(rgb, heat="never")
    d = v.distances / unit
    m = insp.gate.margins(rgb)
    z = (v.raw_score - v.raw_threshold) / scale
    feats.append([*m, z, d.mean(), d.std(), np.percentile(d, 50), np.percentile(d, 90), d.max(), np.mean(d > 1)])
    return z
unseen = split.unseen
pool = build_quality_pool(unseen + synthetic_defects(unseen, 1, rec.seed), spec.input, spec.kinds, spec.levels_per_kind,
                          spec.uint8_share, rec.seed + 2, judge=judge)
F = np.array(feats); fl = flipped(pool.z, pool.group, pool.kind); clean = pool.kind < 0
qual = F[:, :5].min(1)
for name, cols in (("gate margins + z", slice(0, 6)), ("+ map stats", slice(0, 12))):
    for cname, mk in (("logistic", lambda: LogisticRegression(max_iter=5000, class_weight="balanced")),
                      ("gbt", lambda: GradientBoostingClassifier(max_depth=2, n_estimators=100))):
        for rule in ("fit-half threshold", "held-out-half threshold (separability only)"):
            res = []
            for half in (0, 1):
                tr = pool.group % 2 == half; te = ~tr
                p = mk().fit(F[tr][:, cols], fl[tr]).predict_proba(F[:, cols])[:, 1]
                t = np.quantile(p[(tr if rule.startswith("fit") else te) & clean], 0.98)
                ret = (p > t) | (qual < 0)
                o = outcome(ret[te], fl[te], clean[te]); res.append((o.flipped_retaken, o.unflipped_retaken, o.clean_retaken))
            r = np.mean(res, 0)
            print(f"{name:18s} {cname:8s} {rule:44s} recall {r[0]:.3f} waste {r[1]:.3f} clean {r[2]:.3f}")
