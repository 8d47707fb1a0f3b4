"""``kenpin compare --per-type K ...``: how much K real defects per type buy — the curve a plant plans with.

For each K, ``kenpin split-defects`` (same seed) moves K defective images per type to
``train/<defect>/`` and the embedder is metric-learned with them; the frozen embedder (train/good
only, the same for every K) is built once. The seeded picks are nested (K=5's are among K=10's),
so every bundle is scored on one test set: the images that stay in ``test/`` at the largest K.
Then the points differ only by what training saw::

    kenpin compare --data ../shared/datasets/ball_screw --recipe configs/recipe_wide.yaml --per-type 0 5 10 20
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from device.errors import KenpinError
from device.selfcheck import open_checked
from kenpin.pipeline import train_and_report, train_embedding_and_report
from training.evaluate import auroc_standard_error, metrics, score_test_set, write_json
from training.recipe import load_recipe
from training.split_defects import SplitSpec, split_defects


def _point(m: dict[str, Any]) -> dict[str, Any]:
    """What one bundle's curve point keeps of its evaluation."""
    op = m["operating_point"]
    return {"image_auroc": m["image_auroc"],
            "auroc_se": auroc_standard_error(m["image_auroc"], m["n_defective"], m["n_good"]),
            "escapes_at_1pct_frr": op["escape_rate"], "frr_at_1pct_frr": op["false_reject_rate"],
            "escapes_at_1pct_test_frr": m["escapes_at_test_frr"],
            "pixel_aupro": m.get("pixel_aupro"), "per_defect": m["per_defect"], "bundle_id": m["bundle_id"],
            "precision": m["precision"]}


def _evaluate(bundle: Path, test_data: Path) -> dict[str, Any]:
    """Score ``bundle`` (int8, as the station would pick) on ``test_data``; the full metrics land beside it."""
    inspector, _ = open_checked(bundle, "int8")
    m = metrics(score_test_set(inspector, test_data))
    write_json(bundle.parent / f"{bundle.name}-eval.json", m)  # every image's score, for a later look
    return {**_point(m), "dim": inspector.variant.dim}  # the embedding's dims (metric.head.out_dim shrinks it)


def _split(data: Path, workdir: Path, k: int, seed: int) -> Path:
    """WORKDIR/K<k>/data, made once; an existing one from another dataset or seed is refused."""
    out = workdir / f"K{k}" / "data"
    if not out.exists():
        split_defects(data, out, SplitSpec(k, seed))
        return out
    rec = json.loads((out / "SPLIT.json").read_text())
    if (rec["source"], rec["per_type"], rec["seed"]) != (str(data.resolve()), k, seed):
        raise KenpinError(f"{out}: a split of {rec['source']} with K={rec['per_type']}, seed {rec['seed']} is already "
                          f"there; choose a new --workdir for {data} with seed {seed}")
    return out


def run_curve(data: Path, recipe_path: str | None, workdir: Path, ks: list[int], seed: int) -> dict[str, Any]:
    """Frozen once, trained per K, all scored on the test images left at the largest K; writes curve.json."""
    if len(set(ks)) != len(ks) or any(k < 0 for k in ks):
        raise KenpinError(f"--per-type {' '.join(map(str, ks))}: give distinct whole numbers ≥ 0")
    t0, recipe, ks = time.perf_counter(), load_recipe(recipe_path), sorted(ks)
    workdir.mkdir(parents=True, exist_ok=True)
    # Largest K first: a K too large for some type fails before anything is built, naming the type.
    splits = {k: _split(data, workdir, k, seed) for k in reversed(ks)}
    test_data = splits[ks[-1]]
    print(f"[frozen] train/good only → int8 bundle; every point scored on {test_data}/test", flush=True)
    train_and_report(data, workdir / "frozen", recipe)
    curve: dict[str, Any] = {"data": str(data), "seed": seed, "test_set": str(test_data / "test"),
                             "frozen": _evaluate(workdir / "frozen", test_data), "points": []}
    for k in ks:
        kdir = workdir / f"K{k}"
        print(f"[K={k}] metric learning with {k} real defects per type", flush=True)
        s = train_embedding_and_report(splits[k], kdir / "embedding", recipe, resume=False)
        train_and_report(splits[k], kdir / "trained", recipe, kdir / "embedding" / "embedder.pt")
        curve["points"].append({"per_type": k, "best_step": s["best_step"], "train_seconds": s["seconds"],
                                "device": s["device"], **_evaluate(kdir / "trained", test_data)})
    curve["seconds"] = round(time.perf_counter() - t0, 1)
    (workdir / "curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    print_curve(curve)
    return curve


def print_curve(curve: dict[str, Any]) -> None:
    """The curve as a markdown table: the frozen row, then one row per K."""
    print(f"\non {curve['test_set']} (the images left at the largest K), int8:")
    print("| embedder | K per type | image AUROC (SE) | escapes at 1 % FRR (FRR on test/good) | pixel AUPRO |\n"
          "|---|---|---|---|---|")
    rows = [("frozen", "—", curve["frozen"])] + [("trained", str(p["per_type"]), p) for p in curve["points"]]
    for name, k, p in rows:
        aupro = "—" if p["pixel_aupro"] is None else f"{p['pixel_aupro']:.4f}"
        print(f"| {name} {p['dim']}-d | {k} | {p['image_auroc']:.4f} ({p['auroc_se']:.3f}) | {p['escapes_at_1pct_frr']:.3f} "
              f"({p['frr_at_1pct_frr']:.3f}) | {aupro} |")
    print(f"curve finished in {curve['seconds']:.0f} s")
