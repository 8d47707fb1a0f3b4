"""``kenpin bench products``: product switches under load — is every part judged as the product
active when its trigger came, and does every trigger get exactly one verdict?

    kenpin bench products [--bundles B1 B2 ... --replay DIR] [--switches 100] [--workdir DIR]

A station with two or more products runs on software triggers. One thread keeps ``--backlog``
triggers pending at all times (the line never waits, parts are always in flight); the main thread
switches to the next product ``--switches`` times, each after ``--parts-per-switch`` verdicts. A
lock serializes each trigger and each switch with the note of which product was active, so every
trigger id has a known product. After the run the verdict log must hold exactly one verdict per
trigger, judged with that product's bundle and threshold. Each product gets its own threshold, so
a part judged with the wrong product's threshold shows too.

Without --bundles, the tiny generated line is trained into one bundle (needs the training extra,
about a minute) and the other products are copies of it that also hold a file naming the product:
the same model, but different files, so a different bundle id (the exporter's rule,
:func:`device.bundle.bundle_id_of`) — which is what the figure checks.
"""
from __future__ import annotations

import json
import queue
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.bundle import MANIFEST, bundle_id_of, manifest_digest, sha256_file
from device.errors import KenpinError
from device.station.config import parse_config
from device.bench.station import station_log_in
from device.station.station import Station

THRESHOLDS = (0.5, 0.6, 0.4, 0.55, 0.45)  # one per product (cycled), so a wrong threshold shows


def product_copy(src: Path, dest: Path, label: str) -> Path:
    """A copy of bundle ``src`` at ``dest`` that also holds ``product.txt`` naming ``label``: the
    same model and bank, other files, so another bundle id; its manifest is rewritten to match."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    (dest / "product.txt").write_text(f"{label}\n")
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["files"]["product.txt"] = sha256_file(dest / "product.txt")
    manifest["bundle_id"] = bundle_id_of(manifest["files"])
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def products_config(bundles: list[Path], replay: Path, data_dir: Path, workers: int = 1) -> Any:
    """A software-triggered station with one product per bundle (numbers 1, 2, …; thresholds from THRESHOLDS)."""
    items = "\n".join(f"  - {{number: {i + 1}, name: part-{i + 1}, bundle: {b.resolve()}, "
                      f"threshold: {THRESHOLDS[i % len(THRESHOLDS)]}}}" for i, b in enumerate(bundles))
    return parse_config(f"""
station: {{name: bench-products, data_dir: {data_dir}}}
bundle: {{precision: int8, threads: 1}}
camera: {{type: replay, replay: {{folder: {replay.resolve()}, fps: 0, loop: true}}}}
trigger: {{mode: software}}
pipeline: {{workers: {workers}}}
record: {{ok_image_fraction: 0.0}}
dashboard: {{enabled: false}}
products:
{items}
""", "bench:products")


@dataclass
class SwitchRun:
    """What was sent: each trigger id with the product active when it was queued, and the switches."""

    sent: dict[int, int] = field(default_factory=dict)  # trigger id → product number
    switches: int = 0
    in_flight_at_switch: list[int] = field(default_factory=list)  # parts announced, not yet answered
    judged_after_switch: int = 0  # verdicts that arrived when another product than theirs was active
    seconds: float = 0.0


def switch_under_load(station: Station, switches: int, parts_per_switch: int = 3, backlog: int = 4,
                      timeout_s: float = 300.0) -> SwitchRun:
    """Fire software triggers from a thread while switching products ``switches`` times (see the module)."""
    numbers = [p.number for p in station.products]
    if len(numbers) < 2:
        raise KenpinError("switching needs a station with two or more products")
    run, lock, stop = SwitchRun(), threading.Lock(), threading.Event()
    active = [station.active_product.number]
    sub = station.subscribe(maxsize=1_000_000)

    def fire() -> None:
        while not stop.is_set():
            if len(station.triggers) >= backlog:
                time.sleep(0.0005)
                continue
            with lock:  # a trigger and the note of its product, never split by a switch
                run.sent[station.trigger("software")] = active[0]

    def take(n: int | None, deadline: float) -> None:
        """Read ``n`` verdicts (None: those already there), counting those that arrive after a switch
        away from their product (they were in flight across it)."""
        while n is None or n > 0:
            try:
                rec = sub.get(timeout=max(deadline - time.monotonic(), 0.001) if n is not None else 0)
            except queue.Empty:
                if n is None:
                    return
                raise KenpinError(f"no verdict within {timeout_s:g} s of switching; the station stalled") from None
            with lock:  # the trigger's note is written by then (the lock covers trigger and note)
                run.judged_after_switch += run.sent.get(rec.trigger_id, active[0]) != active[0]
            n = None if n is None else n - 1

    firing = threading.Thread(target=fire, name="bench-triggers", daemon=True)
    t0, deadline = time.perf_counter(), time.monotonic() + timeout_s
    firing.start()
    try:
        for _ in range(switches):
            take(parts_per_switch, deadline)
            # verdicts may have waited in the subscription (a switch's audit and fsync take a while):
            # switch only once the firing thread has parts in flight again, so every switch is under load
            while len(run.sent) - _answered(station) < 1 and time.monotonic() < deadline:
                time.sleep(0.0005)
            with lock:
                run.in_flight_at_switch.append(len(run.sent) - _answered(station))
                active[0] = numbers[(numbers.index(active[0]) + 1) % len(numbers)]
                station.switch_product(active[0], "bench")
                run.switches += 1
    finally:
        stop.set()
        firing.join()
    while _answered(station) < len(run.sent) and time.monotonic() < deadline:
        time.sleep(0.02)
    run.seconds = time.perf_counter() - t0
    take(None, deadline)
    station.unsubscribe(sub)
    return run


def _answered(station: Station) -> int:
    """Triggers answered so far: a verdict, or counted as a trigger error."""
    return sum(station.counters.snapshot()[0][k] for k in ("ok", "defect", "retake", "trigger_errors"))


def judge_run(db_path: Path, run: SwitchRun, bundles: dict[int, str], thresholds: dict[int, float]) -> dict[str, Any]:
    """The figures, from the verdict log itself: per trigger sent, its verdicts and what judged them."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT trigger_id, product, bundle_id, threshold FROM verdicts "
                          "WHERE trigger_id IS NOT NULL").fetchall()
    finally:
        db.close()
    count: dict[int, int] = {}
    wrong_product = wrong_bundle = wrong_threshold = 0
    for tid, product, bundle_id, threshold in rows:
        if tid not in run.sent:
            continue
        count[tid] = count.get(tid, 0) + 1
        want = run.sent[tid]
        wrong_product += product != want
        wrong_bundle += bundle_id != bundles[want]
        wrong_threshold += abs(threshold - thresholds[want]) > 1e-9
    in_flight = run.in_flight_at_switch or [0]
    return {"switches": run.switches, "sent": len(run.sent), "recorded": sum(count.values()),
            "lost": sum(1 for t in run.sent if t not in count), "doubled": sum(1 for n in count.values() if n > 1),
            "wrong_product": wrong_product, "wrong_bundle": wrong_bundle, "wrong_threshold": wrong_threshold,
            "judged_after_a_switch_away": run.judged_after_switch, "in_flight_at_switch_min": min(in_flight),
            "in_flight_at_switch_mean": round(sum(in_flight) / len(in_flight), 1), "seconds": round(run.seconds, 1),
            "parts_per_s": round(len(run.sent) / run.seconds, 1) if run.seconds else None}


@dataclass(frozen=True)
class ProductsBenchOptions:
    bundles: list[Path]
    replay: Path
    workdir: Path
    switches: int = 100
    parts_per_switch: int = 3
    backlog: int = 4
    workers: int = 1


def run_products_bench(opts: ProductsBenchOptions) -> int:
    """Run the switches, print the figures (and write them as JSON in the workdir); exit 1 if any part
    was lost, doubled or judged as another product."""
    opts.workdir.mkdir(parents=True, exist_ok=True)
    data = opts.workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    cfg = products_config(opts.bundles, opts.replay, data, opts.workers)
    with station_log_in(opts.workdir / "station.log"):
        st = Station(cfg)
        st.start()
        try:
            products = st.products
            run = switch_under_load(st, opts.switches, opts.parts_per_switch, opts.backlog)
        finally:
            st.stop()
    res = judge_run(data / "verdicts.sqlite3", run, {p.number: p.bundle_id for p in products},
                    {p.number: p.threshold for p in products})
    res.update(products=len(products), workers=opts.workers, backlog=opts.backlog)
    (opts.workdir / "products-bench.json").write_text(json.dumps(res, indent=2))
    print(to_markdown(res))
    bad = res["lost"] + res["doubled"] + res["wrong_product"] + res["wrong_bundle"] + res["wrong_threshold"]
    return 1 if bad else 0


def to_markdown(r: dict[str, Any]) -> str:
    """The figures as the table recorded in BENCHMARKS.md."""
    return "\n".join([
        f"{r['switches']} product switches under load ({r['products']} products, software triggers, "
        f"{r['backlog']} kept pending, {r['workers']} worker(s)), {r['seconds']:.1f} s, "
        f"{r['parts_per_s']} parts/s.", "",
        "| figure | measured | target |", "|---|---|---|",
        f"| triggers sent / verdicts recorded | {r['sent']} / {r['recorded']} | equal |",
        f"| lost / doubled | {r['lost']} / {r['doubled']} | 0 / 0 |",
        f"| judged as another product (product, bundle id, threshold) | {r['wrong_product']}, {r['wrong_bundle']}, "
        f"{r['wrong_threshold']} | 0 |",
        f"| parts announced, not yet answered, at each switch: min / mean | {r['in_flight_at_switch_min']} / "
        f"{r['in_flight_at_switch_mean']} | ≥ 1 (under load) |",
        f"| verdicts that came after a switch away from their product (judged as their own) | "
        f"{r['judged_after_a_switch_away']} | — |",
    ]) + "\n"
