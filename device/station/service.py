"""``kenpin run``: the station as a systemd service.

Type=notify: READY=1 once the camera and model are up; WATCHDOG=1 only while frames really
flow (a stalled camera lets systemd restart us); SIGTERM/SIGINT finish the part in flight,
flush the record and exit 0. The dashboard, the MQTT publisher and the Modbus TCP and OPC UA
servers are started in-process when the config enables them.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sdnotify

from device.errors import KenpinError
from device.station.config import StationConfig, load_config
from device.station.station import Station

log = logging.getLogger("kenpin.station.service")


@dataclass(frozen=True)
class RunOptions:
    """Command-line limits of one run (the config describes the station itself)."""

    duration_s: float | None = None  # stop after this long (demo, benches); None: until SIGTERM
    with_dashboard: bool = True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2e6


class _Dashboard:
    """uvicorn serving device.dashboard in a thread of this process."""

    def __init__(self, station: Station, cfg: StationConfig) -> None:
        import uvicorn

        from device.dashboard import create_app

        settings = cfg.dashboard
        self.enabled = settings.enabled
        if not self.enabled:
            return
        config = uvicorn.Config(create_app(station, settings), host=settings.host, port=settings.port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self.thread.start()
        log.info("dashboard on http://%s:%d/", settings.host, settings.port)

    def stop(self) -> None:
        if self.enabled:
            self.server.should_exit = True
            self.thread.join(timeout=5)


def _mqtt(station: Station, cfg: StationConfig) -> Any:
    """The fleet publisher when the config has an ``mqtt`` section, else None."""
    if cfg.mqtt is None:
        return None
    from device.station.mqtt import start_publisher  # imported only when configured: it loads paho-mqtt

    return start_publisher(station, cfg.mqtt)


def _modbus(station: Station, cfg: StationConfig) -> Any:
    """The Modbus TCP server when the config has a ``modbus`` section, else None."""
    if cfg.modbus is None:
        return None
    from device.station.modbus import start_modbus  # imported only when configured: it loads pymodbus

    return start_modbus(station, cfg.modbus)


def _opcua(station: Station, cfg: StationConfig) -> Any:
    """The OPC UA server when the config has an ``opcua`` section, else None (KenpinError if it cannot bind)."""
    if cfg.opcua is None:
        return None
    from device.station.opcua import start_opcua  # imported only when configured: asyncua is heavy

    return start_opcua(station, cfg.opcua, cfg.config_file)


def serve(station: Station, cfg: StationConfig, options: RunOptions) -> int:
    """Run a started station until SIGTERM/SIGINT, the duration, or a finished replay; then stop it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("signal %d: stopping", signum), stop.set()))
    notifier = sdnotify.SystemdNotifier()
    if notifier.socket is not None:
        # Never wait on the supervisor: a full notify socket (one nobody reads) would otherwise
        # block this loop in sendall and the daemon could not stop. A dropped ping is what the
        # watchdog is there to notice.
        notifier.socket.setblocking(False)
    try:
        plc = _modbus(station, cfg)
    except KenpinError:
        station.stop()  # the parts inspected meanwhile are finished and recorded, then the error is told
        raise
    dashboard = _Dashboard(station, cfg) if options.with_dashboard else None
    publisher = opcua = None
    interval = watchdog_interval()
    tick = min(interval, 1.0) if interval else 1.0
    deadline = time.monotonic() + options.duration_s if options.duration_s else None
    try:  # a server that cannot start (its port taken) still stops the station cleanly: nothing lost
        publisher = _mqtt(station, cfg)
        opcua = _opcua(station, cfg)
        notifier.notify("READY=1")
        while not stop.wait(tick):
            if station.frames_flowing():
                notifier.notify("WATCHDOG=1")
            c = station.counters.snapshot()[0]
            notifier.notify(f"STATUS=triggers {c['triggers']} ok {c['ok']} defect {c['defect']} retake {c['retake']}")
            if deadline is not None and time.monotonic() >= deadline:
                log.info("run duration reached: stopping")
                break
            if station.camera_state.finished and station.wait_replay_done(0):
                log.info("replay finished: stopping")
                break
    finally:
        notifier.notify("STOPPING=1")
        if plc is not None:
            plc.stop()  # first: no trigger may come in while the station stops
        if dashboard is not None:
            dashboard.stop()
        station.stop()
        # After the station: the parts finished in flight are published too (stop() flushes), and
        # an Inspect() waiting for one of them gets its verdict.
        if publisher is not None:
            publisher.stop()
        if opcua is not None:
            opcua.stop()
    c = station.counters.snapshot()[0]
    log.info("stopped: triggers=%d ok=%d defect=%d retake=%d trigger_errors=%d skipped_frames=%d", c["triggers"],
             c["ok"], c["defect"], c["retake"], c["trigger_errors"], c["skipped_frames"])
    return 0


def run_service(config_path: Path, options: RunOptions = RunOptions()) -> int:
    """Load the config, start the station, serve until told to stop; exit status 0 on a clean stop."""
    cfg = load_config(config_path)  # every section, dashboard and mqtt too, is checked before the camera opens
    if cfg.modbus is not None and cfg.modbus.enabled:
        from device.station.modbus import preflight

        preflight(cfg.modbus)  # a map collision or a port in use is one sentence before anything opens
    station = Station(cfg)
    station.start()
    return serve(station, cfg, options)
