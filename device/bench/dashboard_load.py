"""``kenpin bench dashboard load``: 20 dashboard clients against a running station on loopback:
does the line slow down?

    kenpin bench dashboard [load] [--bundle B --replay DIR] [--clients 20] [--seconds 20] [--rounds 3]
        [--live-fps 2] [--pin-clients] [--workdir dashboard-load-run]

The station (the real one: replay camera in free-run, paced so every frame is inspected as fast
as the model goes) and its dashboard (uvicorn, in-process as `kenpin run` does it) run in this
process. Phases alternate: no clients, then N clients (each one Server-Sent Events stream plus
the live MJPEG stream, pushed at --live-fps, as the page reads them), ROUNDS times, so the
machine's background noise hits both sides alike. Throughput is verdicts recorded per second in
each phase; the page latency is, for every verdict event a client receives, its arrival time
minus the moment the daemon decided it (capture time + capture→verdict latency); its server-side
share (decided → taken by the page's stream for writing) is reported beside it.

The clients run in a separate process at nice 19: on the line they are tablets and PCs on the
LAN, not programs on the station's CPU; what they cost the station is the server side, which
runs at the station's own priority. Without --bundle/--replay ``kenpin bench dashboard`` first
generates a line and a bundle (the default recipe, 224 px) into the workdir (a few minutes; needs
the training extra).
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from device.bench.timing import thread_cpu
from device.errors import KenpinError

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoadOptions:
    bundle: Path
    replay: Path
    workdir: Path = Path("dashboard-load-run")
    clients: int = 20
    seconds: float = 20.0  # each measured phase
    rounds: int = 3  # no-clients / clients phase pairs
    live_fps: float = 2.0
    port: int = 18080
    pin_clients: bool = False
    client_cpu: int | None = field(default=None, init=False)  # the core the clients run on, with pin_clients


# ---- clients (run in a child process) ---------------------------------------------------------

async def _sse(client, url: str, stop: float, latencies: list[float], errors: list[str]) -> None:
    try:
        async with client.stream("GET", url + "/api/events", timeout=None) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    rec = json.loads(line[6:])
                    latencies.append(time.time() - (rec["time"] + rec["latency_ms"] / 1000))
                if time.time() > stop:
                    return
    except Exception as e:  # counted and reported, a load client must not stop the others
        errors.append(f"sse: {e!r}")


async def _live(client, url: str, stop: float, counts: dict, errors: list[str]) -> None:
    """Reads the live MJPEG stream as the page does, counting the frames it gets."""
    try:
        async with client.stream("GET", url + "/api/live.mjpg", timeout=None) as r:
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            async for chunk in r.aiter_bytes():
                counts["frames"] = counts.get("frames", 0) + chunk.count(b"Content-Type: image/jpeg")
                if time.time() > stop:
                    return
    except Exception as e:
        errors.append(f"live: {e!r}")


async def _clients(url: str, n: int, seconds: float) -> dict:
    import httpx

    stop = time.time() + seconds
    latencies: list[float] = []
    counts: dict[int, int] = {}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=2 * n + 4)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        tasks = [asyncio.create_task(_sse(client, url, stop, latencies, errors)) for _ in range(n)]
        tasks += [asyncio.create_task(_live(client, url, stop, counts, errors)) for _ in range(n)]
        await asyncio.wait(tasks, timeout=seconds + 5)
        for t in tasks:
            t.cancel()
    return {"latencies": latencies, "frame_status": counts, "errors": errors[:20], "n_errors": len(errors)}


def _client_main(url: str, clients: str, seconds: str, out: str, core: str = "") -> int:
    """The child process (what loaded_phase starts): CLIENTS clients at nice 19, on CORE if given."""
    os.nice(19)
    if core:
        os.sched_setaffinity(0, {int(core)})
    Path(out).write_text(json.dumps(asyncio.run(_clients(url, int(clients), float(seconds)))))
    return 0


# ---- the station side -------------------------------------------------------------------------

def start(bundle: Path, replay: Path, workdir: Path, live_fps: float, port: int):
    import uvicorn

    from device.dashboard import DashboardSettings, create_app
    from device.station.config import parse_config
    from device.station.station import Station

    text = f"""
station: {{name: load-test, data_dir: "{workdir / 'data'}"}}
bundle: {{path: "{bundle}", precision: int8, threads: {min(2, len(os.sched_getaffinity(0)))}}}
camera: {{type: replay, replay: {{folder: "{replay}", fps: 0, loop: true}}}}
trigger: {{mode: free-run}}
"""
    station = Station(parse_config(text, "dashboard_load station config"))
    station.start()
    app = create_app(station, DashboardSettings(host="127.0.0.1", port=port, live_fps=live_fps))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, name="dashboard", daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return station, server, app.state.hub


def cpu_split(prefixes: tuple[str, ...] = ("dashboard", "AnyIO")) -> tuple[float, float]:
    """CPU seconds so far of (threads named PREFIXES…, everything else in this process), from /proc.

    By default the dashboard's: uvicorn's loop ("dashboard"), the SSE pump ("dashboard-events") and
    the thread pool serving sync endpoints ("AnyIO worker thread"). Everything else is the station."""
    return thread_cpu(prefixes)


def verdicts(station) -> int:
    c = station.counters.snapshot()[0]
    return c["ok"] + c["defect"] + c["retake"]


def phase(station, seconds: float, cpu: list | None = None) -> float:
    """Verdicts per second over ``seconds``; appends (dashboard, station) CPU seconds to ``cpu``."""
    n0, t0, c0 = verdicts(station), time.perf_counter(), cpu_split()
    time.sleep(seconds)
    rate = (verdicts(station) - n0) / (time.perf_counter() - t0)
    if cpu is not None:
        c1 = cpu_split()
        cpu.append((c1[0] - c0[0], c1[1] - c0[1]))
    return rate


def loaded_phase(station, hub, opts: LoadOptions, url: str, out: Path, cpu: list) -> tuple[float, dict]:
    warmup = 2.0
    cmd = [sys.executable, "-m", __name__, url, str(opts.clients), str(opts.seconds + warmup + 1), str(out.resolve())]
    if opts.pin_clients:
        cmd.append(str(opts.client_cpu))
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT)
    time.sleep(warmup)  # connections established before measuring
    hub.delays.clear()
    rate = phase(station, opts.seconds, cpu)
    server_delays = list(hub.delays)
    child.wait(timeout=opts.seconds + 60)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    # The clients' own CPU: on the line it is the tablets', here it is taken from the station's cores.
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return rate, dict(json.loads(out.read_text()), server_delays=server_delays,
                      client_machine_share=client_cpu / (wall * (os.cpu_count() or 1)))


def _pin(opts: LoadOptions) -> None:
    """The clients get the last core to themselves, as tablets have their own CPUs."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise KenpinError("--pin-clients needs at least 2 cores")
    opts.client_cpu = cores[-1]
    os.sched_setaffinity(0, set(cores[:-1]))
    print(f"station on cores {cores[:-1]}, clients on core {cores[-1]}", flush=True)


def _rounds(opts: LoadOptions) -> dict:
    """ROUNDS phase pairs (no clients, then clients) on a started station; what each measured."""
    station, server, hub = start(opts.bundle, opts.replay, opts.workdir, opts.live_fps, opts.port)
    url = f"http://127.0.0.1:{opts.port}"
    m: dict = {"base": [], "loaded": [], "lat": [], "frames": {}, "errors": 0, "cpu": [], "sent": [], "client_share": []}
    try:
        time.sleep(3)  # model warm, caches filled
        for r in range(opts.rounds):
            m["base"].append(phase(station, opts.seconds))
            rate, res = loaded_phase(station, hub, opts, url, opts.workdir / f"clients-{r}.json", m["cpu"])
            m["loaded"].append(rate)
            m["lat"] += res["latencies"]
            m["sent"] += res["server_delays"]
            m["errors"] += res["n_errors"]
            m["client_share"].append(res["client_machine_share"])
            for k, v in res["frame_status"].items():
                m["frames"][k] = m["frames"].get(k, 0) + v
            print(f"round {r + 1}: no clients {m['base'][-1]:.1f}/s, {opts.clients} clients {rate:.1f}/s, "
                  f"{len(res['latencies'])} events, {res['n_errors']} errors", flush=True)
    finally:
        server.should_exit = True
        station.stop()
    return m


def run_dashboard_load(opts: LoadOptions) -> int:
    """Measure, print the report (JSON, then the verdict against the targets); exit 0 if every target is met."""
    if not 1 <= opts.clients <= 200 or not 1 <= opts.seconds <= 600 or not 1 <= opts.rounds <= 20:
        raise KenpinError("bounded runs only: --clients 1..200, --seconds 1..600, --rounds 1..20")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    if opts.pin_clients:
        _pin(opts)
    m = _rounds(opts)
    base, loaded, lat, sent, cpu, client_share = m["base"], m["loaded"], m["lat"], m["sent"], m["cpu"], m["client_share"]
    drop = 1 - statistics.median(loaded) / statistics.median(base)
    # Each round's own pair too: on a noisy machine single phases swing by more than the target.
    per_round = [round(1 - b / a, 4) for a, b in zip(base, loaded)]
    # Noise-free view of the same question: the share of the process's CPU spent serving the
    # clients. On a station whose CPU is saturated by inspection, that share is what it loses.
    dash_cpu, station_cpu = sum(c[0] for c in cpu), sum(c[1] for c in cpu)
    share = dash_cpu / (dash_cpu + station_cpu)
    lat.sort()
    sent.sort()
    report = {
        "clients": opts.clients, "live_fps": opts.live_fps, "seconds_per_phase": opts.seconds, "rounds": opts.rounds,
        "throughput_no_clients": [round(x, 2) for x in base], "throughput_with_clients": [round(x, 2) for x in loaded],
        "throughput_drop": round(drop, 4), "throughput_drop_per_round": per_round,
        "dashboard_cpu_share": round(share, 4), "dashboard_cpu_s": round(dash_cpu, 2),
        "station_cpu_s": round(station_cpu, 2), "events": len(lat),
        "client_process_machine_share": round(statistics.median(client_share), 4),
        "latency_s": {"p50": _q(lat, 0.5), "p99": _q(lat, 0.99), "max": lat[-1] if lat else None},
        "server_side_latency_s": {"p50": _q(sent, 0.5), "p99": _q(sent, 0.99), "max": sent[-1] if sent else None},
        "live_stream": m["frames"], "client_errors": m["errors"],
    }
    print(json.dumps(report, indent=1))
    (opts.workdir / "report.json").write_text(json.dumps(report, indent=1))
    ok = drop <= 0.05 and share <= 0.05 and bool(lat) and lat[-1] <= 1.0 and m["errors"] == 0
    print(f"server side (decided → written to each page's stream): p50 {_q(sent, 0.5)} s, "
          f"max {sent[-1] if sent else float('nan'):.3f} s")
    print(f"per-round drops (no clients, then clients): {', '.join(f'{d * 100:.1f}' for d in per_round)} %; "
          f"their median {statistics.median(per_round) * 100:.1f} %")
    print(f"throughput drop {drop * 100:.1f} % measured (median of rounds), {share * 100:.1f} % of the CPU spent "
          f"serving the clients (both ≤ 5 %); page latency p50 {_q(lat, 0.5)} s, max "
          f"{lat[-1] if lat else float('nan'):.3f} s (≤ 1 s): {'PASS' if ok else 'FAIL'}")
    print(f"the client process (not on a station in use) took {statistics.median(client_share) * 100:.1f} % of "
          f"this machine's {os.cpu_count()} cores while it ran (median of rounds)")
    return 0 if ok else 1


def _q(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values else None


if __name__ == "__main__":
    sys.exit(_client_main(*sys.argv[1:]))
