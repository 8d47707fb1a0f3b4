"""The train and eval jobs as the CLI runs them: work, then a short human summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from device.runtime import Inspector
from export.build import build_bundle
from training.evaluate import metrics, score_test_set, write_json
from training.recipe import Recipe


def train_and_report(data: Path, out: Path, recipe: Recipe) -> dict[str, Any]:
    """Build the bundle and print what was calibrated and how int8 compares."""
    body = build_bundle(data, out, recipe)
    v8, v32 = body["variants"]["int8"], body["variants"]["fp32"]
    par = body["parity"]["chosen"]
    print(f"bundle written: {out}")
    print(f"  held-out good images: {body['calibration']['n_holdout_images']}, target false-reject rate "
          f"{body['calibration']['target_false_reject_rate']:.3f}")
    for name, v in (("int8", v8), ("fp32", v32)):
        ev = v["evaluation"]
        print(f"  {name}: threshold {v['threshold']:.4f}, synthetic-defect AUROC {ev['synthetic_auroc']:.4f}, "
              f"synthetic escapes {ev['synthetic_escape_rate']:.3f}")
    print(f"  int8 parity ({par['method']}): spearman {par['spearman']:.4f}, mean |Δscore| {par['mean_abs_diff']:.4f}")
    print(f"next: kenpin eval --bundle {out} --data {data} --json {out}-eval.json --report {out}-report")
    return body


def evaluate_and_report(bundle: Path, data: Path, precision: str, json_path: Path | None,
                        report: Path | None) -> dict[str, Any]:
    """Score test/, write JSON and plots, print the summary."""
    inspector = Inspector.open(bundle, precision)
    ev = score_test_set(inspector, data)
    m = metrics(ev)
    if report is not None:
        from training.report import write_report

        m["report"] = write_report(ev, m, report)
    if json_path is not None:
        write_json(json_path, m)
    print_summary(m)
    if report is not None:
        print(f"report: {report}")
    return m


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def print_summary(m: dict[str, Any]) -> None:
    """The verdict summary an engineer reads first."""
    print(f"evaluated {m['n_good']} good + {m['n_defective']} defective test images ({m['precision']} bundle {m['bundle_id']})")
    print(f"  image AUROC {_fmt(m['image_auroc'])}   pixel AUROC {_fmt(m['pixel_auroc'])}")
    v = m["verdicts"]
    print(f"  verdicts: good parts {v['good']['ok']} ok / {v['good']['defect']} rejected; "
          f"defective parts {v['defective']['defect']} rejected / {v['defective']['ok']} passed (escapes)")
    print(f"  at the calibrated threshold: false rejects {m['false_reject_rate']:.3f}, escapes {m['escape_rate']:.3f}")
    for d, v in m["per_defect"].items():
        print(f"    {d:<18} n={v['n']:<4} AUROC {_fmt(v['auroc'])}  escapes {v['escape_rate']:.3f}")
