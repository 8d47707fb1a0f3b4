"""``kenpin bench burst``: what a burst of N frames per trigger costs, side by side with one frame.

    kenpin bench burst [--bundle B --replay DIR] [--burst 3] [--parts 100] [--rate 5] [--fps 30] [--rounds 2]

A software-triggered station on a replay source that delivers ``--fps`` frames a second, as a camera
does (not paced by the pipeline: a burst waits for the camera's next frames as it would at the line).
The same trigger schedule — ``--parts`` parts at ``--rate`` a second (:func:`schedule`) — runs with ``trigger.burst: 1``
and with ``--burst`` N, alternated for ``--rounds`` rounds so that a noisy neighbour hits both alike.
Trigger → verdict is measured from just before the trigger is queued to the moment its verdict
reaches a subscriber (recorded, pulsed, logged): what the PLC waits for. Afterwards the verdict log
must hold exactly one verdict per trigger (none lost, none doubled), each taken from N frames.

The issue's figure: burst-N p99 ≤ N × the single frame's p99, no trigger lost. The bundle needs a
quality gate (a burst is refused without one). Without --bundle, the tiny generated line is trained
into a bundle with a gate in the workdir (needs the training extra, about a minute).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.bench.station import station_log_in
from device.errors import KenpinError
from device.station.config import StationConfig, parse_config
from device.station.station import Station


@dataclass(frozen=True)
class BurstBenchOptions:
    bundle: Path
    replay: Path
    workdir: Path
    burst: int = 3
    parts: int = 100
    rate: float = 5.0  # parts a second
    fps: float = 30.0  # the replay camera's frame rate
    rounds: int = 2
    json: Path | None = None


def burst_config(opts: BurstBenchOptions, name: str, burst: int) -> StationConfig:
    """A software-triggered station on a camera-rate replay taking ``burst`` frames a trigger."""
    return parse_config(f"""
station: {{name: bench-{name}, data_dir: {opts.workdir / name}}}
bundle: {{path: {opts.bundle.resolve()}, precision: int8, threads: 1}}
camera: {{type: replay, replay: {{folder: {opts.replay.resolve()}, fps: {opts.fps}, loop: true}}}}
trigger: {{mode: software, burst: {burst}}}
dashboard: {{enabled: false}}
""", f"bench:{name}")


def schedule(opts: BurstBenchOptions) -> np.ndarray:
    """When each part's trigger comes, in seconds from the first: ``--rate`` a second on average, each gap
    drawn between half and one and a half of the mean (seeded: every run gets the same triggers). A fixed
    gap would lock the triggers to the camera's frame clock (at 5/s and 30 fps, every 6th frame) and give
    each run one fixed wait for the next frame instead of the spread a line has."""
    gaps = np.random.default_rng(0).uniform(0.5, 1.5, opts.parts) / opts.rate
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def run_parts(opts: BurstBenchOptions, burst: int, name: str) -> dict[str, Any]:
    """The trigger schedule against one station; trigger → verdict of each part and the log's counts."""
    shutil.rmtree(opts.workdir / name, ignore_errors=True)  # a previous run's log would count as doubled
    cfg = burst_config(opts, name, burst)
    st = Station(cfg)
    st.start()
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    stop = threading.Event()
    try:
        sub = st.subscribe(maxsize=opts.parts + 16)
        for _ in range(3):  # warm-up parts (sessions, SQLite, page cache): not counted
            st.trigger()
            sub.get(timeout=60)

        def receive() -> None:
            for rec in sub.follow(stop, poll_s=0.05):
                got.setdefault(rec.trigger_id, time.monotonic())

        receiver = threading.Thread(target=receive, name="bench-receiver", daemon=True)
        receiver.start()
        t0 = time.monotonic()
        for due in schedule(opts):
            delay = t0 + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            before = time.monotonic()
            sent[st.trigger()] = before
        deadline = time.monotonic() + 60 + opts.parts * burst / opts.fps
        while len(set(sent) & set(got)) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        receiver.join(5)
        refused = st.status()["queues"]["triggers_refused"]
    finally:
        stop.set()
        st.stop()
    return _summary(cfg, burst, sent, got, refused)


def _summary(cfg: StationConfig, burst: int, sent: dict[int, float], got: dict[int, float],
             refused: int) -> dict[str, Any]:
    db = sqlite3.connect(cfg.station.data_dir / "verdicts.sqlite3")
    try:
        rows = db.execute("SELECT trigger_id, COUNT(*), MIN(frames), MAX(frames) FROM verdicts "
                          "WHERE trigger_id IS NOT NULL GROUP BY trigger_id").fetchall()
    finally:
        db.close()
    counts = {t: (n, lo, hi) for t, n, lo, hi in rows}
    ms = np.array([(got[t] - sent[t]) * 1000 for t in sent if t in got])
    return {"burst": burst, "sent": len(sent), "lost": sum(t not in counts for t in sent),
            "doubled": sum(counts[t][0] > 1 for t in sent if t in counts), "refused": refused,
            "short_bursts": sum(counts[t][1] < burst for t in sent if t in counts),
            "ms": ms.tolist()}


def run_burst_bench(opts: BurstBenchOptions) -> int:
    """Alternate single-frame and burst rounds; print the table (and write JSON); exit 1 if a trigger was lost."""
    if opts.burst < 2:
        raise KenpinError(f"--burst {opts.burst}: compare a burst of 2 or more frames with the single frame")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict[str, Any]]] = {1: [], opts.burst: []}
    with station_log_in(opts.workdir / "stations.log"):
        for r in range(opts.rounds):
            for burst in (1, opts.burst):
                res = run_parts(opts, burst, f"burst{burst}-round{r + 1}")
                runs[burst].append(res)
                lat = np.array(res["ms"])
                print(f"round {r + 1}, burst {burst}: {len(lat)} verdicts, p50 {np.percentile(lat, 50):.1f} ms, "
                      f"p99 {np.percentile(lat, 99):.1f} ms, {res['lost']} lost", flush=True)
    result = summarize(opts, runs)
    print(to_markdown(result))
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))
    (opts.workdir / "burst-bench.json").write_text(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["doubled"] == 0 else 1


def summarize(opts: BurstBenchOptions, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each burst's pooled trigger → verdict p50/p99 and counts, and the burst's ratios to the single frame."""
    out: dict[str, Any] = {"parts": opts.parts, "rate_hz": opts.rate, "fps": opts.fps, "rounds": opts.rounds,
                           "by_burst": {}}
    for burst, rs in runs.items():
        lat = np.concatenate([np.array(r["ms"]) for r in rs])
        out["by_burst"][str(burst)] = {
            "verdicts": int(lat.size), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            **{k: sum(r[k] for r in rs) for k in ("sent", "lost", "doubled", "refused", "short_bursts")}}
    one, n = out["by_burst"]["1"], out["by_burst"][str(opts.burst)]
    out["burst"] = opts.burst
    out["p50_ratio"] = round(n["p50_ms"] / one["p50_ms"], 2)
    out["p99_ratio"] = round(n["p99_ms"] / one["p99_ms"], 2)
    out["lost"] = one["lost"] + n["lost"]
    out["doubled"] = one["doubled"] + n["doubled"]
    return out


def to_markdown(res: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    n = res["burst"]
    lines = [f"Triggered station, replay camera at {res['fps']:g} fps, {res['parts']} parts at {res['rate_hz']:g}/s "
             f"per run, {res['rounds']} round(s) alternated; trigger → verdict (queued → recorded and told).", "",
             "| frames per trigger | verdicts | p50 ms | p99 ms | lost | doubled | short bursts |", "|---|---|---|---|---|---|---|"]
    for burst, b in res["by_burst"].items():
        lines.append(f"| {burst} | {b['verdicts']} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['lost']} | "
                     f"{b['doubled']} | {b['short_bursts']} |")
    lines += ["", f"burst {n} ÷ single frame: p50 {res['p50_ratio']:.2f}, p99 {res['p99_ratio']:.2f} "
              f"(target p99 ≤ {n}, 0 lost)"]
    return "\n".join(lines) + "\n"
