"""The train and eval jobs as the CLI runs them: work, then a short human summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from device.selfcheck import open_checked
from export.build import build_bundle
from training.evaluate import OPERATING_FRR, metrics, score_test_set, write_json
from device.errors import KenpinError
from training.recipe import Recipe, load_recipe


def recipe_for(path: str | None, embedder: Path | None) -> Recipe | None:
    """The recipe file; none given: the recipe the embedder was trained with, or without an
    embedder None (``train_and_report`` then lets the recipe choose itself)."""
    if path is not None:
        return load_recipe(path)
    if embedder is None:
        return None
    import torch

    from training.recipe import recipe_from_dict

    try:
        saved = torch.load(embedder, map_location="cpu", weights_only=True)["recipe"]
    except Exception as e:
        raise KenpinError(f"{embedder}: not a readable kenpin embedder checkpoint ({e})") from None
    return recipe_from_dict(saved, f"{embedder} (its recipe)")


def train_and_report(data: Path, out: Path, recipe: Recipe | None, embedder: Path | None = None,
                     max_pi4_ms: float | None = None) -> dict[str, Any]:
    """Build the bundle and print what was calibrated and how int8 compares; with no recipe, first
    choose one on validation (``training.recipe_choice``), among candidates within ``max_pi4_ms``."""
    choice = None
    if recipe is None:
        from training.recipe_choice import choose_recipe

        print("choosing the recipe on validation (held-out good, synthetic and train/ defects; never test/):")
        recipe, choice = choose_recipe(data, max_pi4_ms=max_pi4_ms)
        print(f"chose {choice['chosen']}: {choice['reason']}")
    body = build_bundle(data, out, recipe, embedder, choice)
    print(f"bundle written: {out} ({body['probes']['n_good']} good + {body['probes']['n_defect']} defect probes "
          f"for the station's own check)")
    print(f"  held-out good images: {body['calibration']['n_holdout_images']}, target false-reject rate "
          f"{body['calibration']['target_false_reject_rate']:.3f}")
    for name, v in body["variants"].items():
        ev, par = v["evaluation"], v.get("parity")
        print(f"  {name}: threshold {v['threshold']:.4f}, synthetic-defect AUROC {ev['synthetic_auroc']:.4f}, "
              f"synthetic escapes {ev['synthetic_escape_rate']:.3f}"
              + (f"; parity here ({par['method']}): spearman {par['spearman']:.4f}, mean |Δscore| "
                 f"{par['mean_abs_diff']:.4f}" + (" (export's choice)" if name == body["int8_default"] else "")
                 if par else ""))
    print(f"next: kenpin verify --bundle {out}   # then: kenpin eval --bundle {out} --data {data} "
          f"--json {out}-eval.json --report {out}-report")
    return body


def train_embedding_and_report(data: Path, out: Path, recipe: Recipe, resume: bool) -> dict[str, Any]:
    """Metric-learn the embedder; print what validation chose and the next command."""
    from training.metric.train import train_embedding

    s = train_embedding(data, out, recipe, resume)
    if s["rank"] != 0:  # under torchrun, rank 0 validates and reports
        return s
    if s["best_step"] == 0:
        print(f"training did not beat step 0 ({s['start']}) on validation (AUROC {s['frozen_val_auroc']:.4f}); "
              f"{s['embedder']} is that step 0")
    else:
        print(f"selected step {s['best_step']}: validation AUROC {s['best_val_auroc']:.4f} "
              f"({s['start']} {s['frozen_val_auroc']:.4f}); {s['steps']} steps in {s['seconds']:.0f} s on {s['device']}")
    print(f"next: kenpin train --data {data} --embedder {s['embedder']} --out BUNDLE")
    return s


def evaluate_and_report(bundle: Path, data: Path, precision: str, json_path: Path | None,
                        report: Path | None, compare: Path | None = None) -> dict[str, Any]:
    """Score test/, write JSON and plots, print the summary.

    With ``compare`` (another bundle, e.g. the frozen one), both are scored on the same images, the
    JSON holds both and the report gains the embedding map before (``compare``) and after (``bundle``).
    """
    inspector, check = open_checked(bundle, precision)
    print(f"variant {inspector.variant.name}: {check.summary()}")
    ev = score_test_set(inspector, data)
    m = metrics(ev)
    m["self_check"] = check.to_dict()
    if compare is not None:
        ev0 = score_test_set(open_checked(compare, precision)[0], data)
        m["compared_with"] = {"bundle": str(compare), **metrics(ev0)}
    if report is not None:
        from training.report import plot_embeddings_before_after, write_report

        m["report"] = write_report(ev, m, report)
        if compare is not None:
            path = report / "embeddings_before_after.png"
            plot_embeddings_before_after(ev0, ev, (compare.name, bundle.name), path)
            m["report"]["embeddings_before_after"] = str(path)
    if json_path is not None:
        write_json(json_path, m)
    if compare is not None:
        print(f"--- {compare} (compared with)")
        print_summary(m["compared_with"])
        print(f"--- {bundle}")
    print_summary(m)
    if compare is not None:
        print_comparison(m["compared_with"], m, compare.name, bundle.name)
    if report is not None:
        print(f"report: {report}")
    return m


def print_comparison(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> None:
    """Two bundles side by side on the same images: AUROC, and false rejects and escapes at each
    bundle's own threshold (what the line would see), overall and per defect type."""
    print(f"{'':<18} {name_a[:14]:>14} {name_b[:14]:>14}")
    print(f"{'image AUROC':<18} {_fmt(a['image_auroc']):>14} {_fmt(b['image_auroc']):>14}")
    print(f"{'false rejects':<18} {a['false_reject_rate']:>14.3f} {b['false_reject_rate']:>14.3f}")
    print(f"{'escapes':<18} {a['escape_rate']:>14.3f} {b['escape_rate']:>14.3f}")
    for d in b["per_defect"]:
        pa, pb = a["per_defect"][d], b["per_defect"][d]
        print(f"  {d:<16} {_fmt(pa['auroc']):>14} {_fmt(pb['auroc']):>14}   escapes "
              f"{pa['escape_rate']:.3f} → {pb['escape_rate']:.3f}")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def print_summary(m: dict[str, Any]) -> None:
    """The verdict summary an engineer reads first."""
    print(f"evaluated {m['n_good']} good + {m['n_defective']} defective test images ({m['precision']} bundle {m['bundle_id']})")
    print(f"  image AUROC {_fmt(m['image_auroc'])}   pixel AUROC {_fmt(m['pixel_auroc'])}   "
          f"pixel AUPRO {_fmt(m.get('pixel_aupro'))}")
    op = m.get("operating_point") or {}
    if op.get("escape_rate") is not None:
        print(f"  at {op['target_false_reject_rate']:.0%} false rejects (threshold from {op['threshold_from']}): "
              f"escapes {op['escape_rate']:.3f}, false rejects on test/good {op['false_reject_rate']:.3f}")
    elif op:
        print(f"  at {op['target_false_reject_rate']:.0%} false rejects: n/a, {op['threshold_from']}")
    if m.get("escapes_at_test_frr") is not None:
        print(f"  with the threshold at {OPERATING_FRR:.0%} false rejects on test/good itself (to compare bundles): "
              f"escapes {m['escapes_at_test_frr']:.3f}")
    v = m["verdicts"]
    print(f"  verdicts: good parts {v['good']['ok']} ok / {v['good']['defect']} rejected; "
          f"defective parts {v['defective']['defect']} rejected / {v['defective']['ok']} passed (escapes)")
    print(f"  at the bundle's threshold: false rejects {m['false_reject_rate']:.3f}, escapes {m['escape_rate']:.3f}")
    for d, v in m["per_defect"].items():
        print(f"    {d:<18} n={v['n']:<4} AUROC {_fmt(v['auroc'])}  escapes {v['escape_rate']:.3f}")
