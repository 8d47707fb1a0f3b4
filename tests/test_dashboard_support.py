"""Shared by the dashboard, browser, fuzz tests and the load script: a REAL station (replay of the
tiny line, the tiny bundle) and its dashboard served by uvicorn on loopback. No tests in here."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TOKEN = "engineer-secret-token"
VIEWER_TOKEN = "viewer-secret-token"


def replay_folder(line: Path, dest: Path) -> Path:
    """Good and defective test parts of a generated line, interleaved in name order (3 good : 1 bad)."""
    dest.mkdir(parents=True, exist_ok=True)
    good = sorted((line / "test" / "good").glob("*.png"))
    bad = sorted(p for d in sorted((line / "test").iterdir()) if d.name != "good" for p in d.glob("*.png"))
    i = 0
    while good or bad:
        for _ in range(3):
            if good:
                shutil.copy(good.pop(0), dest / f"{i:04d}.png")
                i += 1
        if bad:
            shutil.copy(bad.pop(0), dest / f"{i:04d}.png")
            i += 1
    return dest


def station_yaml(data_dir: Path, bundle: Path, replay: Path, mode: str = "free-run", rate_hz: float = 5.0,
                 fps: float = 20.0, dashboard: str = "") -> str:
    """A station config for tests; ``dashboard`` is extra YAML lines under ``dashboard:``."""
    return f"""
station: {{name: test-line, data_dir: "{data_dir}"}}
bundle: {{path: "{bundle}", precision: int8, threads: 1}}
camera: {{type: replay, replay: {{folder: "{replay}", fps: {fps}, loop: true}}}}
trigger: {{mode: {mode}, rate_hz: {rate_hz}}}
record: {{ok_image_fraction: 1.0}}
dashboard:
  enabled: true
{dashboard}
"""


def start_station(tmp: Path, line: Path, bundle: Path, **kw):
    """A started Station (the real one) on a replay of ``line`` with ``bundle``."""
    from device.station.config import parse_config
    from device.station.station import Station

    replay = replay_folder(line, tmp / "replay")
    cfg = parse_config(station_yaml(tmp / "data", bundle, replay, **kw), "test station config")
    station = Station(cfg)
    station.start()
    return station


def engineer_settings(**kw):
    """Dashboard settings with the engineer's (and optionally a viewer's) token hashed in."""
    from device.dashboard import DashboardSettings
    from device.dashboard.auth import hash_token

    kw.setdefault("token_hash", hash_token(TOKEN, iterations=2000))  # fast tests; the CLI uses 200k
    return DashboardSettings(host="127.0.0.1", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, port: int | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    """Poll until ``predicate()`` is truthy; returns its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")
