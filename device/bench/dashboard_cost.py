"""``kenpin bench dashboard cost``: what each kind of dashboard traffic costs the station's CPU, one kind at a time.

    kenpin bench dashboard cost [--clients 20] [--rate 45] [--seconds 10] [--sse-batch S]

The real dashboard app (uvicorn, in this process, pinned to core 0) in front of a stand-in
station that records RATE verdicts a second and has a new live frame every time it is asked;
CLIENTS clients in a child process pinned to the last core read one kind of traffic: the
verdict stream (SSE), the live MJPEG stream, the live frame polled at 2/s (the page's old way),
or nothing. Prints the process's CPU, as % of one core, for each. Needs 2 cores.
"""
from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.errors import KenpinError

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("none", "sse", "mjpg", "poll")


class _Sub:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=10_000)

    def get(self, timeout: float | None = None):
        return self.q.get(timeout=timeout)


class StandInStation:
    """Just what the live and events routes use: subscribe/unsubscribe and latest_frame."""

    name, threshold = "stand-in", 0.5

    def __init__(self, rate: float) -> None:
        import cv2
        import numpy as np

        from device.station.record import VerdictRecord

        self._record = VerdictRecord
        part = np.full((256, 256, 3), 120, np.uint8)
        cv2.circle(part, (128, 128), 90, (200, 190, 180), -1)  # a plain part: a realistic JPEG size
        self._jpeg = cv2.imencode(".jpg", part, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        self._subs: list[_Sub] = []
        self.n, self.rate = 0, rate
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(1 / self.rate)
            self.n += 1
            rec = self._record(time.time(), self.name, "b", "ok", 0.1, 0.5, 1.0, 2.0, None, 20.0, "free-run", id=self.n)
            for s in list(self._subs):
                s.q.put_nowait(rec)

    def subscribe(self, maxsize: int = 256) -> _Sub:
        s = _Sub()
        self._subs.append(s)
        return s

    def unsubscribe(self, s: _Sub) -> None:
        self._subs.remove(s)

    def wait_frame(self, seen: int, timeout: float) -> int:
        return seen + 1  # a new frame is always there: the page's own rate limit paces the stream

    def latest_frame(self):
        return self._jpeg + self.n.to_bytes(4, "little"), None  # a new frame each time


async def _clients(url: str, kind: str, n: int, seconds: float) -> None:
    import httpx

    stop = time.time() + seconds

    async def stream(path: str) -> None:
        async with client.stream("GET", url + path, timeout=None) as r:
            async for _ in r.aiter_bytes():
                if time.time() > stop:
                    return

    async def poll() -> None:
        etag = None
        while time.time() < stop:
            r = await client.get(url + "/api/live.jpg", headers={"If-None-Match": etag} if etag else {})
            etag = r.headers.get("etag")
            await asyncio.sleep(0.5)

    make = {"sse": lambda: stream("/api/events"), "mjpg": lambda: stream("/api/live.mjpg"), "poll": poll}.get(kind)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n + 4), timeout=10) as client:
        tasks = [asyncio.create_task(make()) for _ in range(n)] if make else []
        if tasks:
            await asyncio.wait(tasks, timeout=seconds + 3)
        else:
            await asyncio.sleep(seconds)


@dataclass(frozen=True)
class CostOptions:
    clients: int = 20
    rate: float = 45.0  # verdicts per second of the stand-in station
    seconds: float = 10.0
    sse_batch: float | None = None  # seconds of verdicts per SSE write (default: the dashboard's)


def measure(kind: str, opts: CostOptions, port: int, client_core: int) -> float:
    import uvicorn

    from device.dashboard import DashboardSettings, create_app

    station = StandInStation(opts.rate)
    app = create_app(station, DashboardSettings(host="127.0.0.1", port=port, live_fps=2.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = subprocess.Popen([sys.executable, "-m", __name__, f"http://127.0.0.1:{port}", kind,
                               str(opts.clients), str(opts.seconds + 4), str(client_core)], cwd=ROOT)
    time.sleep(3)  # connected
    t, c = time.perf_counter(), sum(os.times()[:2])
    time.sleep(opts.seconds)
    share = (sum(os.times()[:2]) - c) / (time.perf_counter() - t)
    client.wait()
    server.should_exit = True
    return share


def run_serving_cost(opts: CostOptions) -> int:
    """The server on the first core, the clients on the last; one line per kind of traffic; exit 0."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise KenpinError("needs 2 cores: the server on one, the clients on another")
    os.sched_setaffinity(0, {cores[0]})
    if opts.sse_batch is not None:
        from device.dashboard import events

        events.BATCH_S = opts.sse_batch
    for i, kind in enumerate(KINDS):
        share = measure(kind, opts, 18190 + i, cores[-1])
        print(f"{kind:5s}: {share * 100:5.2f} % of a core ({opts.clients} clients, {opts.rate:g} verdicts/s)", flush=True)
    return 0


def _client_main(url: str, kind: str, clients: str, seconds: str, core: str) -> int:
    """The child process (what measure starts): CLIENTS clients of one KIND, pinned to CORE."""
    os.sched_setaffinity(0, {int(core)})
    asyncio.run(_clients(url, kind, int(clients), float(seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(_client_main(*sys.argv[1:]))
