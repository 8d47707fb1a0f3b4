"""``kenpin retrain``: the feedback loop — marked verdicts in, a new bundle out, judged beside the running one.

The operators' marks (``device.station.feedback``) join the running bundle's dataset
(``training.feedback_data``): marked good parts widen the bank and the held-out good the
threshold comes from; marked defects train the embedder as real negatives (metric learning,
selected on validation like ``kenpin train-embedding``). The new bundle and the running one are
then scored on the same images with the same report, so the quality engineer sees before uploading
what the retrain changed — on the marked parts themselves and on a test set neither trained on.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from device.bundle import read_manifest
from device.errors import KenpinError
from device.images import read_rgb
from device.selfcheck import open_checked
from kenpin.pipeline import evaluate_and_report
from training.feedback_data import Feedback, merged_dataset, read_feedback
from training.recipe import Recipe, recipe_from_dict


def running_recipe(bundle: Path) -> Recipe:
    """The recipe the running bundle was built with (its manifest keeps it whole)."""
    manifest = read_manifest(bundle)
    if "recipe" not in manifest:
        raise KenpinError(f"--bundle {bundle}: its manifest records no recipe; retrain with --recipe FILE")
    return recipe_from_dict(manifest["recipe"], f"{bundle} (its recipe)")


def marked_verdicts(bundle: Path, feedback: Feedback, precision: str) -> dict[str, Any]:
    """How a bundle judges the marked images themselves: good ones passed, defects rejected."""
    inspector, _ = open_checked(bundle, precision)

    good, bad = ([inspector.judge(read_rgb(p)).verdict for p in paths] for paths in (feedback.good, feedback.defect))
    return {"bundle": str(bundle), "variant": inspector.variant.name,
            "good_passed": good.count("ok"), "n_good": len(good),
            "defects_rejected": bad.count("defect"), "n_defect": len(bad)}


def _train(data: Path, work: Path, out: Path, recipe: Recipe, feedback: Feedback) -> dict[str, Any]:
    """Metric-learn with the marked defects (when there are any), then build the bundle at ``out``."""
    from export.build import build_bundle
    from training.metric.train import train_embedding

    embedder = None
    if feedback.defect and recipe.metric.few_shot:
        print(f"[2/4] metric learning with {len(feedback.defect)} marked defect(s) as real negatives "
              f"({recipe.metric.steps} steps, selected on validation)", flush=True)
        s = train_embedding(data, work / "embedding", recipe)
        print(f"  kept step {s['best_step']}: validation AUROC {s['best_val_auroc']:.4f} (frozen "
              f"{s['frozen_val_auroc']:.4f}; step 0 is the frozen embedder); {s['seconds']:.0f} s on {s['device']}")
        embedder = Path(s["embedder"])
    else:
        print("[2/4] no marked defects (or metric.few_shot off): the frozen embedder, refitted", flush=True)
    print("[3/4] fitting and exporting the new bundle", flush=True)
    return build_bundle(data, out, recipe, embedder)


def retrain(bundle: Path, feedback_dir: Path, data: Path, out: Path, eval_data: Path | None,
            recipe: Recipe | None, precision: str = "auto") -> dict[str, Any]:
    """Retrain ``bundle`` with the marks in ``feedback_dir`` into ``out``; compare both; returns the figures."""
    if out.exists():
        raise KenpinError(f"--out {out}: already exists; choose a new folder (the running bundle is never overwritten)")
    recipe = recipe or running_recipe(bundle)
    fb = read_feedback(feedback_dir)
    print(f"[1/4] {len(fb.good)} part(s) marked good, {len(fb.defect)} marked defective, from {feedback_dir}")
    with tempfile.TemporaryDirectory(prefix="kenpin-retrain-") as tmp:
        merged = merged_dataset(data, fb, Path(tmp) / "data")
        _train(merged, Path(tmp), out, recipe, fb)
    try:
        return _compare(bundle, out, fb, eval_data, precision)
    except BaseException:
        # A new bundle nobody has seen compared is not one to upload by mistake.
        shutil.rmtree(out, ignore_errors=True)
        raise


def _compare(bundle: Path, out: Path, fb: Feedback, eval_data: Path | None, precision: str) -> dict[str, Any]:
    print("[4/4] the running bundle and the new one, side by side", flush=True)
    marked = [marked_verdicts(b, fb, precision) for b in (bundle, out)]
    print(f"{'on the marked parts (trained on)':<36} {'running':>10} {'new':>10}")
    print(f"{'  marked good, passed':<36} {_of(marked[0], 'good'):>10} {_of(marked[1], 'good'):>10}")
    print(f"{'  marked defective, rejected':<36} {_of(marked[0], 'defect'):>10} {_of(marked[1], 'defect'):>10}")
    result: dict[str, Any] = {"bundle": str(out), "running": str(bundle), "marked": marked}
    if eval_data is not None:
        m = evaluate_and_report(out, eval_data, precision, out.parent / f"{out.name}-eval.json",
                                out.parent / f"{out.name}-report", compare=bundle)
        result["evaluation"] = {k: m[k] for k in ("image_auroc", "false_reject_rate", "escape_rate")}
        result["evaluation"]["running"] = {k: m["compared_with"][k]
                                           for k in ("image_auroc", "false_reject_rate", "escape_rate")}
    else:
        print("no --eval images: give a test set neither bundle trained on (MVTec layout) to see the change there")
    print(f"next: upload {out} on the dashboard's bundle page (it is checked on the station's CPU first), "
          f"or set bundle.path in the station config")
    return result


def _of(m: dict[str, Any], kind: str) -> str:
    n = m["n_good"] if kind == "good" else m["n_defect"]
    k = m["good_passed"] if kind == "good" else m["defects_rejected"]
    return f"{k}/{n}" if n else "—"
