"""``kenpin eval-ranker``: a bundle's rankers on data they were not trained on.

The quality gate on held-out degradations of ``DATA/test/good`` (evaluation strengths between the
training ones, fresh seeds), with its cost beside the anomaly model's; the grade on a held-out
ratings file (Kendall τ, NDCG@k, pairwise accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.bundle import load_bundle
from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.quality import Grader, QualityGate
from device.runtime import Inspector
from training.dataset import read_many
from training.rank.flip_eval import flip_report, judge_frames, print_flips
from training.rank.metrics import degradation_table, plot_strength, ranking_metrics
from training.rank.pairs import read_judgements


def eval_quality(bundle: Path, data: Path, precision: str, seed: int, json_path: Path | None,
                 report: Path | None, with_flips: bool = True) -> dict[str, Any]:
    """Held-out degradations (evaluation grid, fresh seeds) of ``data/test/good``, scored by the bundle's gate;
    ``with_flips``: also which degradations of every test image flip the anomaly verdict, and which the gate retakes."""
    gate = QualityGate.from_bundle(load_bundle(bundle), threads=1, precision=precision)
    if gate is None:
        raise KenpinError(f"{bundle}: has no quality model; add one with kenpin train-ranker --bundle {bundle} --data DIR")
    paths = list_images(data / "test" / "good")
    if not paths:
        raise KenpinError(f"{data / 'test' / 'good'}: no held-out good images to evaluate on")
    images, _ = read_many(paths, "reading test/good")
    cost = gate_cost(bundle, (images * 3)[:300], precision)
    score, column = _gate_columns(gate)
    table = degradation_table(score, images, seed, column)
    clean = np.asarray(table["clean_scores"])[:, 0]
    for r in table["rows"]:
        r["retake_rate"] = float(np.mean(np.asarray(r["gate_scores"]) < gate.floor))
    out = {"bundle": str(bundle), "precision": precision, "n_images": len(images), "floor": gate.floor,
           "families": [f.to_dict() for f in gate.ranker.families],
           "clean_false_retake_rate": float(np.mean(clean < gate.floor)),
           "cost": cost, "rows": [{k: v for k, v in r.items() if not k.endswith("scores")} for r in table["rows"]]}
    if with_flips:
        flips = flip_report(judge_frames(Inspector(load_bundle(bundle), precision, 2, rankers=True), data, seed))
        out["verdict_flips"] = {"gate_follows_verdicts": gate.follows_verdicts, **flips}
    if report is not None:
        out["plot"] = str(plot_strength(table, report / "quality_vs_strength.png", gate.floor))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"quality gate ({precision}) on {len(images)} held-out good images, floor {gate.floor:.3f}: "
          f"clean frames retaken {out['clean_false_retake_rate']:.3f}")
    print(f"  cost per frame: gate {cost['gate']['median_ms']:.2f} ms vs anomaly model ({cost['anomaly_input']}) "
          f"{cost['anomaly']['median_ms']:.2f} ms: {100 * cost['ratio']:.1f} % (medians, side by side)")
    print(f"  {'kind':<13}{'strength':>9} {'path':<6} {'family':<12} {'pair acc':>8} {'gate acc':>8} {'retaken':>8}")
    for r in out["rows"]:
        print(f"  {r['kind']:<13}{r['param']:>9g} {r['path']:<6} {r['family']:<12} {r['pairwise_accuracy']:>8.4f} "
              f"{r['gate_pairwise_accuracy']:>8.4f} {r['retake_rate']:>8.3f}")
    if with_flips:
        print_flips(out["verdict_flips"])
    return out


def _gate_columns(gate: QualityGate) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[str], tuple[int, str]]]:
    """A frame → [gate quality, each family's margin], and a kind → (the column that ranks it, its family).
    Kinds no family was trained on are judged by the gate's quality."""
    fams = gate.ranker.families
    if not fams:
        return (lambda f: np.array([gate.score(f)])), (lambda kind: (0, "quality"))
    col = {k: (1 + i, f.name) for i, f in enumerate(fams) for k in f.kinds}

    def score(frame: np.ndarray) -> np.ndarray:
        m = gate.margins(frame)
        return np.concatenate([[m.min()], m])

    return score, (lambda kind: col.get(kind, (0, "(gate)")))


def gate_cost(bundle: Path, frames: list[np.ndarray], precision: str = "int8", anomaly_threads: int = 2) -> dict[str, Any]:
    """Per-frame cost of the gate (its preprocessing included) vs the anomaly model's inspection,
    timed side by side on the same frames, with the station's thread settings."""
    from device.bench.timing import time_side_by_side

    b = load_bundle(bundle)
    gate = QualityGate.from_bundle(b, threads=1, precision=precision)
    insp = Inspector(b, precision, anomaly_threads)
    t = time_side_by_side({"anomaly": insp.inspect, "gate": gate.score}, frames)
    anomaly_input = f"{b.preprocess.width}x{b.preprocess.height}"
    return {"anomaly_input": anomaly_input, **t, "ratio": t["gate"]["median_ms"] / t["anomaly"]["median_ms"],
            "n_frames": len(frames)}


def eval_grade(bundle: Path, ratings: Path, precision: str, k: int, json_path: Path | None) -> dict[str, Any]:
    """Kendall τ, NDCG@k and pairwise accuracy of the bundle's grade on a rated file (held out from training)."""
    b = load_bundle(bundle)
    grader = Grader.from_bundle(b, threads=1, precision=precision)
    if grader is None:
        raise KenpinError(f"{bundle}: has no grade model; add one with kenpin train-ranker --role grade --ratings FILE")
    judged = read_judgements(ratings)
    if judged.ratings is None:
        raise KenpinError(f"{ratings}: evaluation needs an image,rating file (better,worse pairs have no scale)")
    if grader.reads_anomaly_model:  # it grades the anomaly model's view of each frame: open that model too
        insp = Inspector(b, precision, 1)
        grade: Callable[[np.ndarray], float] = lambda rgb: insp.grade(rgb, grader)  # noqa: E731
    else:
        grade = grader.grade
    scores = np.array([grade(read_rgb(p)) for p in judged.images])
    m = {"bundle": str(bundle), "ratings": str(ratings), "precision": precision,
         **ranking_metrics(scores, np.asarray(judged.ratings), k)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(m, indent=2) + "\n")
    print(f"grade ({precision}) on {m['n_images']} rated images: Kendall τ {m['kendall_tau']:.4f}, "
          f"NDCG@{k} {m[f'ndcg@{k}']:.4f}, pairwise accuracy {m['pairwise_accuracy']:.4f}")
    return m
