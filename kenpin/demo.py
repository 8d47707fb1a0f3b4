"""``kenpin demo``: the whole path on a generated sample line, no camera, GPU or download.

Generates a deterministic line of procedural parts (good ones and six kinds of defects), trains
on its good parts, exports the int8 bundle, inspects the held-out parts and prints the summary;
then runs the station daemon on a replay of held-out parts with that bundle (a bounded run) and
prints its counts.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from device.preprocess import Preprocess

from kenpin.pipeline import evaluate_and_report, train_and_report
from training.recipe import Recipe
from training.synthetic_line import LineSpec, generate_line


def demo_recipe() -> Recipe:
    """The defaults at 320 px: the line's faint spots and thin scratches are a few pixels wide.

    Chosen with ``kenpin tune`` on the line's train/good (held-out good vs painted defects):
    224 px 0.927, 256 px 0.983, 320 px 0.998, 384 px 0.991 synthetic-defect AUROC.
    32 int8 calibration images instead of 64: onnxruntime's histogram calibrators hold every
    activation of every image in memory, and the demo must fit a small laptop.
    """
    r = Recipe()
    return replace(r, preprocess=Preprocess(320, 320), export=replace(r.export, quant_images=32))


def run_demo(workdir: Path, seed: int = 0) -> int:
    """Run the demo in ``workdir``; exit status 0 when the line was inspected."""
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = LineSpec(seed=seed)
    print(f"[1/4] generating the sample line (seed {seed}) in {workdir / 'line'}", flush=True)
    line = generate_line(workdir / "line", spec)
    print("[2/4] training on train/good, exporting the int8 bundle", flush=True)
    bundle = workdir / "bundle"
    train_and_report(line, bundle, demo_recipe())
    print("[3/4] inspecting the held-out parts with the int8 bundle", flush=True)
    evaluate_and_report(bundle, line, "int8", workdir / "eval.json", workdir / "report")
    print("[4/4] running the station daemon on a replay of held-out parts", flush=True)
    run_station(workdir, line, bundle)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; metrics: {workdir / 'eval.json'}")
    return 0


def replay_folder(line: Path, dest: Path, per_kind: int = 4) -> Path:
    """A replay folder of held-out parts: a few of every kind, interleaved, in name order."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    kinds = sorted(p for p in (line / "test").iterdir() if p.is_dir())
    for kind in kinds:
        for i, src in enumerate(sorted(kind.iterdir())[:per_kind]):
            shutil.copy(src, dest / f"{i:03d}_{kind.name}_{src.name}")
    return dest


def station_yaml(workdir: Path, bundle: Path, replay: Path, ok_image_fraction: float = 0.1,
                 frame_format: str = "jpg") -> Path:
    """The demo's station config (a replay camera that stops at its last image)."""
    path = workdir / "station.yaml"
    path.write_text(f"""# Written by `kenpin demo`; every key is documented in configs/station.yaml.
station: {{name: demo-line, data_dir: {(workdir / 'station-data').resolve()}}}
bundle: {{path: {bundle.resolve()}, precision: auto}}
camera: {{type: replay, replay: {{folder: {replay.resolve()}, fps: 0, loop: false}}}}
record: {{ok_image_fraction: {ok_image_fraction}, frame_format: {frame_format}}}
dashboard: {{enabled: false}}
""")
    return path


def run_station(workdir: Path, line: Path, bundle: Path, replay: Path | None = None,
                ok_image_fraction: float = 0.1, frame_format: str = "jpg") -> Path:
    """``kenpin run`` on a replay (default: a few of ``line``'s held-out parts of each kind), in this
    process, until the replay ends; print its counts. Returns the station's data folder."""
    from device.station.config import load_config
    from device.station.service import RunOptions, serve
    from device.station.station import Station

    replay = replay or replay_folder(line, workdir / "replay")
    config = station_yaml(workdir, bundle, replay, ok_image_fraction, frame_format)
    cfg = load_config(config)
    station = Station(cfg)
    station.start()
    serve(station, cfg, RunOptions(duration_s=120, with_dashboard=False))
    c, ms = station.counters.snapshot()
    print(f"station: {c['triggers']} parts inspected: {c['ok']} ok, {c['defect']} defect, {c['retake']} retake, "
          f"{c['trigger_errors']} errors; latency p50 {ms['p50']} ms; verdict log {cfg.station.data_dir}")
    print(f"next: kenpin run --config {config}   (set camera.replay.loop: true and dashboard.enabled: true to watch it)")
    return cfg.station.data_dir
