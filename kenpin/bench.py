"""``kenpin bench``: train, export, evaluate and time each dataset in one run.

    kenpin bench --data ../shared/datasets/magnetic_tile ../shared/datasets/ball_screw \\
        --markdown bench-run/bench.md          # recipes chosen on validation; --recipe NAME=R.yaml forces one
"""
from __future__ import annotations

import json
from dataclasses import replace
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device.bench.timing import time_side_by_side
from device.bundle import load_bundle
from device.errors import KenpinError
from device.images import read_rgb
from device.runtime import Inspector, Verdict
from device.selfcheck import self_check
from device.scoring import NearestNeighbourScorer, patches_from_map
from export.build import build_bundle
from training.dataset import scan_mvtec
from training.evaluate import metrics, score_test_set
from training.features import PatchEmbedder
from training.recipe import Recipe, ReductionSpec, load_recipe


def _recipes(specs: list[str]) -> dict[str, str]:
    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            raise KenpinError(f"--recipe {s!r}: expected DATASET_NAME=RECIPE.yaml")
        out[name] = path
    return out


def global_embedding_auroc(inspector: Inspector, data: Path) -> float:
    """The whole-image alternative: mean patch embedding, nearest train/good image. For comparison."""
    from sklearn.metrics import roc_auc_score

    ds = scan_mvtec(data, need_test=True)
    ref = np.stack([inspector.embed(read_rgb(p)).mean(0) for p in ds.train_good])
    scorer = NearestNeighbourScorer(ref)
    test = [t for t in ds.test]
    q = np.stack([inspector.embed(read_rgb(t.path)).mean(0) for t in test])
    return float(roc_auc_score([t.is_defective for t in test], scorer.distances(q)))


def latency(bundle: Path, recipe: Recipe, frames: list[np.ndarray], int8: str) -> dict[str, dict[str, float]]:
    """torch vs ORT fp32 vs ORT int8 (the variant ``int8``; preprocess + model + scoring), and the bare int8 model."""
    torch.set_num_threads(2)
    i8, f32 = Inspector.open(bundle, int8), Inspector.open(bundle, "fp32")
    model = PatchEmbedder(recipe.features).eval()
    pre = i8.preprocess

    def torch_path(rgb: np.ndarray) -> Verdict:  # torch's embedding, judged like the station judges
        with torch.inference_mode():
            fmap = model(torch.from_numpy(pre(rgb))).numpy()
        return f32.judge(rgb, patches_from_map(fmap), heat="never")

    x = pre(frames[0])
    patches = {id(f): i8.embed(f) for f in frames}  # each frame's own, as the station searches them
    # A reduced bundle's projection lives in its ONNX graph only: torch has no model of it to time.
    torch_paths = {} if recipe.reduction.dim else {"torch fp32": torch_path}
    return time_side_by_side({
        **torch_paths,
        "ORT fp32": lambda f: f32.inspect(f),
        "ORT int8": lambda f: i8.inspect(f),
        "bare ORT int8 model": lambda f: i8.run(x),
        "int8 bank search": lambda f: i8.scorer.distances(patches[id(f)]),
        "int8 search + decision": lambda f: i8.judge(f, patches[id(f)], heat="never"),
    }, frames)


def peak_memory(bundle: Path, images: list[Path]) -> dict[str, Any]:
    """Run the station runtime in its own process and read its peak RSS."""
    out = subprocess.run([sys.executable, "-m", "device.memprobe", str(bundle), "int8", *map(str, images)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bundle_for(data: Path, bundle: Path, recipe: Recipe | None, reuse: bool) -> dict[str, Any]:
    """Build the bundle, or with ``reuse`` take the one a previous run left in the workdir when it
    verifies and was built from the same recipe (re-running the figures without re-training).
    No recipe: it chooses itself as in ``kenpin train`` (a reused bundle must have chosen too)."""
    if recipe is None:
        if reuse and bundle.is_dir() and "recipe_choice" in (manifest := load_bundle(bundle).manifest):
            print(f"reusing {bundle} (its recipe chose itself: {manifest['recipe_choice']['chosen']})", flush=True)
            return manifest
        from training.recipe_choice import choose_recipe

        recipe, choice = choose_recipe(data)
        print(f"chose {choice['chosen']}: {choice['reason']}", flush=True)
        return build_bundle(data, bundle, recipe, recipe_choice=choice)
    if reuse and bundle.is_dir():
        manifest = load_bundle(bundle).manifest
        if manifest.get("recipe") == json.loads(json.dumps(recipe.to_dict())):  # as the manifest stores it
            print(f"reusing {bundle} (same recipe; built {manifest.get('created_utc')})", flush=True)
            return manifest
        print(f"{bundle}: built from another recipe; rebuilding", flush=True)
    return build_bundle(data, bundle, recipe)


def bench_dataset(data: Path, work: Path, recipe: Recipe | None, n_images: int, reuse: bool = False) -> dict[str, Any]:
    """All figures for one dataset (no recipe: chosen on validation, as ``kenpin train`` does)."""
    bundle = work / f"{data.name}-bundle"
    body = _bundle_for(data, bundle, recipe, reuse)
    if recipe is None:
        from training.recipe import recipe_from_dict

        recipe = recipe_from_dict(body["recipe"], f"{bundle} (its chosen recipe)")
    res: dict[str, Any] = {"dataset": data.name, "input": f"{recipe.preprocess.width}x{recipe.preprocess.height}",
                           "embedding_dim": body["variants"]["fp32"]["output_shape"][1],
                           "bank_size": body["variants"]["fp32"]["bank_size"], "search": recipe.scoring.search,
                           "quant_method": body["parity"]["chosen"]["method"],
                           "recipe_choice": body.get("recipe_choice")}
    b = load_bundle(bundle)
    full = self_check(b, 2, full=True)
    res["self_check"] = full.to_dict()
    parity = {c.variant: c for c in full.checks}
    res["variants"] = {}
    for name, v in full.checked.items():  # each at the threshold the station would recalibrate here
        m = metrics(score_test_set(Inspector(b, v, 2), data))
        res["variants"][name] = {**{k: m[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "false_reject_rate",
                                                     "escape_rate", "operating_point", "per_defect")},
                                 "check": parity[name].to_dict()}
    res["int8_variant"] = self_check(b, 2, "int8").chosen  # what a station asked for int8 runs here
    res["int8"], res["fp32"] = res["variants"][res["int8_variant"]], res["variants"]["fp32"]
    res["global_embedding_auroc_fp32"] = global_embedding_auroc(Inspector.open(bundle, "fp32"), data)
    ds = scan_mvtec(data, need_test=True)
    paths = [t.path for t in ds.test][:: max(1, len(ds.test) // n_images)][:n_images]
    frames = [read_rgb(p) for p in paths]
    res["latency"] = latency(bundle, recipe, frames, res["int8_variant"])
    sizes = {n: (bundle / n).stat().st_size for n in b.manifest["files"]}
    v8 = b.variant(res["int8_variant"])
    res["bundle_mb"] = round(sum(sizes.values()) / 1e6, 2)
    res["int8_only_mb"] = round((v8.model.stat().st_size + v8.bank.stat().st_size) / 1e6, 2)
    res["probes_mb"] = round(b.probes.path.stat().st_size / 1e6, 2) if b.probes else 0.0
    res["runtime_memory"] = peak_memory(bundle, paths[:30])
    return res


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _op(v: dict[str, Any]) -> str:
    """Escapes at the operating point, with the false-reject rate the held-out threshold gave on test/good."""
    op = v.get("operating_point") or {}
    return "n/a" if op.get("escape_rate") is None else f"{op['escape_rate']:.3f} ({op['false_reject_rate']:.3f})"


def markdown(results: list[dict[str, Any]]) -> str:
    """The BENCHMARKS.md table."""
    lines = ["| dataset | input | image AUROC int8 | fp32 | abs Δ | global-embedding AUROC (fp32) | pixel AUROC int8 | "
             "pixel AUPRO int8 | escapes int8 at 1 % FRR (FRR test/good) | FRR / escapes int8 at the bundle's threshold | torch ms | ORT fp32 ms | ORT int8 ms | bare int8 model ms | search ms | "
             "search + decision ÷ CNN | station ÷ bare int8 | int8 speed-up vs fp32 / torch | bundle MB (int8 part) | "
             "runtime peak RSS MB |",
             "|" + "---|" * 20]
    for r in results:
        lat = {k: v["median_ms"] for k, v in r["latency"].items()}
        a8, a32 = r["int8"]["image_auroc"], r["fp32"]["image_auroc"]
        torch_ms = lat.get("torch fp32")
        decide = lat.get("int8 search + decision")
        vs_torch = "n/a" if torch_ms is None else f"{torch_ms / lat['ORT int8']:.2f}×"
        lines.append(
            f"| {r['dataset']} ({r.get('embedding_dim', '?')}-d, {r.get('search', 'fp32')} search) | {r['input']} | {a8:.4f} | {a32:.4f} | {abs(a8 - a32):.4f} | "
            f"{r['global_embedding_auroc_fp32']:.4f} | {_f(r['int8']['pixel_auroc'])} | {_f(r['int8'].get('pixel_aupro'))} | "
            f"{_op(r['int8'])} | "
            f"{r['int8']['false_reject_rate']:.3f} / {r['int8']['escape_rate']:.3f} | "
            f"{_f(torch_ms, 1)} | {lat['ORT fp32']:.1f} | {lat['ORT int8']:.1f} | {lat['bare ORT int8 model']:.1f} | "
            f"{lat['int8 bank search']:.1f} | {_f(decide and decide / lat['bare ORT int8 model'], 3)} | "
            f"{lat['ORT int8'] / lat['bare ORT int8 model']:.2f} | "
            f"{lat['ORT fp32'] / lat['ORT int8']:.2f}× / {vs_torch} | "
            f"{r['bundle_mb']} ({r['int8_only_mb']}) | {r['runtime_memory']['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def variants_markdown(results: list[dict[str, Any]]) -> str:
    """Per variant on this CPU: probe parity, test AUROC, FRR on test/good at the station's recalibrated
    threshold, escapes; and which variant the station runs."""
    lines = ["", f"Variants on this CPU ({results[0]['self_check']['cpu'] if results else ''}):", "",
             "| dataset | variant | probe check | probe spearman / mean abs Δ | threshold here (export) | "
             "image AUROC | FRR test/good | escapes | escapes at 1 % FRR (FRR test/good) | station runs |",
             "|" + "---|" * 10]
    for r in results:
        for name, v in r["variants"].items():
            c = v["check"]
            th = f"{c['threshold']:.4f} ({c['export_threshold']:.4f})" if c["threshold"] is not None else "-"
            lines.append(f"| {r['dataset']} | {name} | {c['status']} | {c['spearman']:.4f} / {c['mean_abs_diff']:.4f} | "
                         f"{th} | {v['image_auroc']:.4f} | {v['false_reject_rate']:.3f} | {v['escape_rate']:.3f} | {_op(v)} | "
                         f"{'yes' if name == r['self_check']['chosen'] else ''} |")
    lines += ["", *(f"{r['dataset']}: probe set {r['probes_mb']} MB, full self-check {r['self_check']['seconds']:.1f} s "
                    f"({r['self_check']['model_runs']} model runs)" for r in results)]
    return "\n".join(lines) + "\n"


def _baseline(recipe: Recipe | None) -> Recipe | None:
    """The same recipe with the full embedding and the fp32 GEMM search, benched beside a compact or
    int8-search recipe; None where the recipe is that already."""
    if recipe is None or (not recipe.reduction.dim and recipe.scoring.search == "fp32"):
        return None
    return replace(recipe, reduction=ReductionSpec(), scoring=replace(recipe.scoring, search="fp32"))


def run_bench(datasets: list[Path], work: Path, recipe_specs: list[str], md_path: str | None, n_images: int,
              reuse: bool = False) -> int:
    """Bench every dataset, print the table, write JSON (and markdown)."""
    recipes = _recipes(recipe_specs)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for data in datasets:
        recipe = load_recipe(recipes[data.name]) if data.name in recipes else None
        print(f"== {data.name}: recipe {recipes.get(data.name, 'chosen on validation (as kenpin train does)')}",
              flush=True)
        results.append(bench_dataset(data, work, recipe, n_images, reuse))
        full = _baseline(recipe)
        if full is not None:  # beside it in the same run
            print(f"== {data.name}: the same recipe with the full embedding and the fp32 search", flush=True)
            results.append(bench_dataset(data, work / "full-embedding", full, n_images, reuse))
        (work / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results) + variants_markdown(results)
    print(table)
    if md_path:
        Path(md_path).write_text(table)
    print(f"full results: {work / 'bench.json'}")
    return 0
