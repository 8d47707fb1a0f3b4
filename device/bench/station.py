"""``kenpin bench station``: the daemon's figures, measured side by side in one run.

    kenpin bench station --bundle BUNDLE_224_INT8 --replay DIR [--seconds 20] \\
        [--triggered-seconds 60] [--memory-minutes 20] [--markdown FILE]

1. Throughput: the whole pipeline (replay source paced by the pipeline, free-run, recording on)
   against the bare ONNX Runtime rate (session.run on a prepared tensor; the best of one session
   at each thread count and of the station's own layout, one session per worker side by side)
   and the bare inspector (preprocess + model + reference search, no pipeline), alternated in
   rounds so that a noisy neighbour hits all of them alike; p50/p99 latency (capture → verdict).
2. Triggered mode: software triggers at 2x the measured pipeline rate for ``--triggered-seconds``;
   every trigger must get exactly one recorded verdict (none lost, none doubled); the backlog is
   reported.
3. Memory: ``kenpin run`` as its own process for ``--memory-minutes``; its VmRSS sampled at
   regular intervals (growth = last sample minus the first after warm-up).
4. Pi estimate: the model's multiply-accumulates (the manifest's ``model_gmacs``) over published Pi rates,
   plus the measured non-model work scaled by the same factor — an estimate, labelled so.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from device.bench.station_report import side_by_side, to_markdown
from device.bundle import load_bundle
from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.macs import PI_REFERENCES, model_gmacs, pi_model_ms
from device.runtime import Inspector
from device.selfcheck import self_check
from device.station.config import parse_config
from device.station.station import Station

log = logging.getLogger("kenpin.station.bench")


@dataclass(frozen=True)
class StationBenchOptions:
    bundle: Path
    replay: Path
    workdir: Path
    seconds: float = 20.0
    triggered_seconds: float = 60.0
    memory_minutes: float = 0.0
    threads: int = 2
    markdown: Path | None = None
    rounds: int = 3
    workers: int = 1
    compare: Path | None = None  # a second bundle (e.g. the full embedding beside a reduced one), benched alike


def _frames(replay: Path, n: int = 32) -> list[np.ndarray]:
    paths = list_images(replay)[:n]
    if not paths:
        raise KenpinError(f"--replay {replay}: no images found; pass a folder of PNG/JPEG parts")
    return [read_rgb(p) for p in paths]


def _config(opts: StationBenchOptions, name: str, mode: str = "free-run") -> Any:
    data = opts.workdir / name
    return parse_config(f"""
station: {{name: bench-{name}, data_dir: {data}}}
bundle: {{path: {opts.bundle.resolve()}, precision: int8, threads: {opts.threads}}}
camera: {{type: replay, replay: {{folder: {opts.replay.resolve()}, fps: 0, loop: true}}}}
trigger: {{mode: {mode}}}
pipeline: {{workers: {opts.workers}}}
dashboard: {{enabled: false}}
""", f"bench:{name}")


def _loop_rate(step: Callable[[int], object], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(n)
        n += 1
    return n / (time.perf_counter() - t0)


def _parallel_rate(steps: list[Callable[[int], object]], seconds: float) -> float:
    """Calls/s of ``steps`` run side by side, one Python thread each (ORT and BLAS release the GIL)."""
    if len(steps) == 1:
        return _loop_rate(steps[0], seconds)
    counts = [0] * len(steps)

    def loop(k: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            steps[k](counts[k])
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(steps))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _ort_step(insp: Inspector, tensors: list[np.ndarray]) -> Callable[[int], object]:
    return lambda n: insp.embedder(tensors[n % len(tensors)])


def bare_rates(sessions: dict[int, Inspector], layout: list[Inspector], frames: list[np.ndarray],
               seconds: float) -> dict[str, Any]:
    """Frames/s of session.run alone and of the whole inspector (preprocess + model + search).

    session.run is timed in one session at each thread count of ``sessions`` and in the station's
    own layout (``layout``: one session per pipeline worker, run side by side); the baseline is
    the best of them, so it is never a weakened one. The inspector is timed in the station's layout
    too: the same work as the pipeline without capture, queues or recording.
    """
    tensors = [layout[0].preprocess(f) for f in frames]
    share = seconds / (len(sessions) + 3)
    by_threads = {t: _loop_rate(_ort_step(insp, tensors), share) for t, insp in sessions.items()}
    rates = dict(by_threads)
    if len(layout) > 1:
        side_by_side = _parallel_rate([_ort_step(i, tensors) for i in layout], share)
        rates[f"{len(layout)} sessions side by side (the station's layout)"] = side_by_side
    inspect = [lambda n, i=i: i.inspect(frames[n % len(frames)]) for i in layout]
    # As the station does for parallel workers: one BLAS thread per search, not oversubscribed cores.
    with threadpool_limits(limits=1 if len(layout) > 1 else None, user_api="blas"):
        inspector_fps = _parallel_rate(inspect, share)
    return {"ort_fps": max(rates.values()), "ort_fps_by_layout": {str(k): v for k, v in rates.items()},
            "ort_fps_1_thread": by_threads[1], "inspector_fps": inspector_fps,
            "inspector_fps_1_thread": _loop_rate(lambda n: sessions[1].inspect(frames[n % len(frames)]), share)}


def pipeline_rate(opts: StationBenchOptions, seconds: float, round_no: int) -> dict[str, Any]:
    """Verdicts/s of the running Station (after a warm-up), with the recorded latencies."""
    st = Station(_config(opts, f"throughput-{round_no}"))
    st.start()
    try:
        time.sleep(min(2.0, seconds / 4))  # warm-up: sessions, SQLite, page cache
        sub = st.subscribe(maxsize=1_000_000)
        t0 = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - t0
        st.unsubscribe(sub)
        lat = []
        while True:
            try:
                lat.append(sub.get(timeout=0).latency_ms)
            except Exception:  # queue.Empty: drained
                break
        status = st.status()
    finally:
        st.stop()
    if not lat:  # e.g. an emulated CPU: not one frame through the pipeline in the window
        raise KenpinError(f"no verdict within {elapsed:.1f} s of free-run: this machine is too slow for a "
                          f"{seconds:g} s window; give --seconds more")
    lat_a = np.asarray(lat)
    return {"fps": len(lat) / elapsed, "n": len(lat), "p50_ms": float(np.percentile(lat_a, 50)),
            "p99_ms": float(np.percentile(lat_a, 99)), "skipped": status["counters"]["skipped_frames"]}


def triggered_run(opts: StationBenchOptions, rate: float) -> dict[str, Any]:
    """Software triggers at ``rate``/s for the configured time; count answers per trigger in the DB."""
    cfg = _config(opts, "triggered", mode="software")
    st = Station(cfg)
    st.start()
    sent: list[int] = []
    max_backlog = 0
    try:
        period, t0 = 1.0 / rate, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < opts.triggered_seconds:
            due = int(elapsed / period) + 1
            while len(sent) < due:
                sent.append(st.trigger("software"))
            max_backlog = max(max_backlog, len(st.triggers))
            time.sleep(min(period, 0.005))
        send_s = time.perf_counter() - t0
        def answered() -> int:
            c = st.counters.snapshot()[0]
            return c["ok"] + c["defect"] + c["retake"] + c["trigger_errors"]

        drained = _wait(lambda: answered() >= len(sent), timeout=opts.triggered_seconds * 3 + 30)
        time.sleep(0.5)
        drain_s = time.perf_counter() - t0 - send_s
        status = st.status()
    finally:
        st.stop()
    db = sqlite3.connect(cfg.station.data_dir / "verdicts.sqlite3")
    try:
        counts = dict(db.execute("SELECT trigger_id, COUNT(*) FROM verdicts WHERE trigger_id IS NOT NULL "
                                 "GROUP BY trigger_id").fetchall())
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    lost = sum(1 for t in sent if t not in counts)
    doubled = sum(1 for t in sent if counts.get(t, 0) > 1)
    return {"rate_hz": rate, "seconds": round(send_s, 1), "sent": len(sent), "recorded": sum(counts.values()),
            "lost": lost, "doubled": doubled, "refused": status["queues"]["triggers_refused"],
            "max_backlog": max(max_backlog, status["queues"]["triggers_max_backlog"]),
            "drain_s": round(drain_s, 1), "drained": drained, "integrity": integrity}


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def memory_run(opts: StationBenchOptions) -> dict[str, Any]:
    """``kenpin run`` in its own process for the configured minutes; VmRSS sampled along the way."""
    seconds = opts.memory_minutes * 60
    cfg_path = opts.workdir / "memory.yaml"
    cfg_path.write_text(f"""station: {{name: bench-memory, data_dir: {(opts.workdir / 'memory').resolve()}}}
bundle: {{path: {opts.bundle.resolve()}, precision: int8, threads: {opts.threads}}}
camera: {{type: replay, replay: {{folder: {opts.replay.resolve()}, fps: 0, loop: true}}}}
pipeline: {{workers: {opts.workers}}}
dashboard: {{enabled: false}}
""")
    logf = open(opts.workdir / "memory-daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "kenpin.cli", "run", "--config", str(cfg_path),
                             "--duration", str(seconds + 5)], stdout=logf, stderr=subprocess.STDOUT)
    interval = 60.0 if seconds >= 600 else max(seconds / 10, 5.0)
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) <= seconds and proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((round(elapsed, 1), round(rss, 1)))
            time.sleep(interval)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        logf.close()
    if len(samples) < 3:
        raise KenpinError(f"memory run: the daemon ended early (exit {rc}); see {opts.workdir / 'memory-daemon.log'}")
    after_warmup = samples[1:]
    return {"minutes": opts.memory_minutes, "samples": samples, "peak_mb": max(s[1] for s in samples),
            "growth_mb": round(after_warmup[-1][1] - after_warmup[0][1], 1), "exit": rc}


def cnn_and_search(insp: Inspector, frames: list[np.ndarray], repeat: int = 3) -> dict[str, float]:
    """One thread, per frame: the CNN alone, and the search + decision on its patches (median ms)."""
    tensors = [insp.preprocess(f) for f in frames]
    patches = [insp.run(t) for t in tensors]
    cnn, search = [], []
    with threadpool_limits(1):
        for _ in range(repeat):
            for f, t, p in zip(frames, tensors, patches):
                t0 = time.perf_counter()
                insp.run(t)
                t1 = time.perf_counter()
                insp.judge(f, p, heat="never")
                search.append(time.perf_counter() - t1)
                cnn.append(t1 - t0)
    c, s = 1000 * float(np.median(cnn)), 1000 * float(np.median(search))
    return {"cnn_ms": round(c, 2), "search_decision_ms": round(s, 2), "ratio": round(s / c, 3)}


def pi_estimate(gmacs: float, model_ms_here: float, frame_ms_here: float) -> dict[str, Any]:
    """Parts/s on a Pi 4 and 5: model time from MACs at the published rates, the rest scaled alike.

    ``frame_ms_here`` is the bare inspector's time (preprocess + model + search) on this CPU; the
    non-model part is scaled by the same factor as the model. Parts/s is 1000 / (model + rest):
    the serial sum, conservative, since the station's stages overlap on the Pi's four cores.
    """
    out = {}
    other_ms = max(frame_ms_here - model_ms_here, 0.0)
    for board, ref in PI_REFERENCES.items():
        model_ms = pi_model_ms(gmacs, board)
        factor = model_ms / model_ms_here
        total = model_ms + other_ms * factor
        out[board] = {"reference": f"{ref['model']} ≈ {ref['ms']} ms", "model_ms": round(model_ms, 1),
                      "other_ms": round(other_ms * factor, 1), "parts_per_s": round(1000 / total, 1)}
    return out


@contextmanager
def station_log_in(path: Path) -> Iterator[None]:
    """The in-process stations' log lines go to ``path`` while inside (thousands of verdict lines:
    written, so their cost stays measured, but not printed)."""
    station_log = logging.getLogger("kenpin.station")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    station_log.addHandler(handler)
    saved = station_log.level, station_log.propagate
    station_log.setLevel(logging.INFO)
    station_log.propagate = False
    try:
        yield
    finally:
        station_log.removeHandler(handler)
        handler.close()
        station_log.setLevel(saved[0])
        station_log.propagate = saved[1]


def run_station_bench(opts: StationBenchOptions) -> int:
    """Run the figures and print (and optionally write) them as Markdown; with ``compare``, the
    second bundle's too and the per-frame split of both side by side; exit 0."""
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with station_log_in(opts.workdir / "stations.log"):
        results = [_run(opts)]
        if opts.compare is not None:
            print(f"== the same figures for {opts.compare}", flush=True)
            results.append(_run(replace(opts, bundle=opts.compare, workdir=opts.workdir / "compare", compare=None,
                                        markdown=None)))
            print(side_by_side(results))
    return 0


def _run(opts: StationBenchOptions) -> dict[str, Any]:
    """The measurements, in order: alternating throughput rounds, triggered run, memory run, Pi estimate."""
    bundle = load_bundle(opts.bundle)
    frames = _frames(opts.replay)
    variant = self_check(bundle, opts.threads, "int8").variant  # the one the station (precision int8) runs here
    sessions = {t: Inspector(bundle, variant, t) for t in sorted({1, opts.threads, os.cpu_count() or 1})}
    insp = sessions[opts.threads]
    layout = [insp] + [Inspector(bundle, variant, opts.threads) for _ in range(opts.workers - 1)]
    bare, pipe = [], []
    for r in range(opts.rounds):  # alternate, so machine noise hits both
        bare.append(bare_rates(sessions, layout, frames, opts.seconds / opts.rounds))
        pipe.append(pipeline_rate(opts, opts.seconds / opts.rounds, r))
        print(f"round {r + 1}: bare ORT {bare[-1]['ort_fps']:.1f}/s, inspector {bare[-1]['inspector_fps']:.1f}/s, "
              f"pipeline {pipe[-1]['fps']:.1f}/s (p50 {pipe[-1]['p50_ms']:.1f} ms, p99 {pipe[-1]['p99_ms']:.1f} ms)",
              flush=True)
    ort_fps = float(np.median([b["ort_fps"] for b in bare]))
    insp_fps = float(np.median([b["inspector_fps"] for b in bare]))
    best = sorted(pipe, key=lambda p: p["fps"])[len(pipe) // 2]  # the median round
    res: dict[str, Any] = {"bundle": bundle.bundle_id, "variant": variant.name, "input": [bundle.preprocess.width, bundle.preprocess.height],
                           "threads": opts.threads, "workers": opts.workers, "ort_fps": round(ort_fps, 1), "inspector_fps": round(insp_fps, 1),
                           "pipeline": best, "rounds": {"bare": bare, "pipeline": pipe}}
    res["ratio_vs_ort"] = round(best["fps"] / ort_fps, 3)
    res["ratio_vs_inspector"] = round(best["fps"] / insp_fps, 3)
    res["p99_over_p50"] = round(best["p99_ms"] / best["p50_ms"], 2)
    res["cnn_and_search"] = cnn_and_search(sessions[1], frames)
    res["embedding_dim"] = int(np.load(variant.bank, mmap_mode="r").shape[1])
    rate = 2 * best["fps"]
    if opts.triggered_seconds > 0:
        print(f"triggered run: {rate:.0f} triggers/s (2x the pipeline rate) for {opts.triggered_seconds:.0f} s", flush=True)
        res["triggered"] = triggered_run(opts, rate)
    if opts.memory_minutes > 0:
        print(f"memory run: kenpin run for {opts.memory_minutes:g} min", flush=True)
        res["memory"] = memory_run(opts)
    # Recorded at export; bundles from before that are counted here where onnx is installed.
    gmacs = bundle.manifest.get("model_gmacs") or model_gmacs(insp.variant.model.parent / "embedder_fp32.onnx")
    if gmacs:
        res["gmacs"] = round(gmacs, 3)
        one = [float(np.median([b[k] for b in bare])) for k in ("ort_fps_1_thread", "inspector_fps_1_thread")]
        res["pi_estimate"] = pi_estimate(gmacs, 1000 / one[0], 1000 / one[1])
    (opts.workdir / "station-bench.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    print(md)
    if opts.markdown:
        opts.markdown.write_text(md)
    return res
