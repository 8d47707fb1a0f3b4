"""`kenpin run` as systemd runs it: READY/WATCHDOG over $NOTIFY_SOCKET, SIGTERM → flush, exit 0."""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.station_helpers import replay_folder, service_config_file

ROOT = Path(__file__).resolve().parents[1]


def _kenpin(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kenpin.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run_under_supervisor(line: Path, bundle: Path, tmp: Path, watchdog_usec: int
                          ) -> tuple[socket.socket, subprocess.Popen]:
    """`kenpin run` on a replay of ``line`` with a notify socket in place of systemd's."""
    replay = replay_folder(line, tmp / "replay")
    sock_path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(watchdog_usec))
    return sock, _kenpin("run", "--config", str(service_config_file(tmp, bundle, replay)), env=env)


def test_sigterm_finishes_flushes_and_every_logged_verdict_is_recorded(tiny_line, tiny_bundle, tmp_path):
    sock, proc = _run_under_supervisor(tiny_line, tiny_bundle, tmp_path, watchdog_usec=1_000_000)
    try:
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert messages[0] == "READY=1"
        lines = []
        while sum(line.startswith("INFO verdict id=") for line in lines) < 10:
            line = proc.stdout.readline()
            assert line, "daemon ended early:\n" + "".join(lines)
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        killer = threading.Timer(60, proc.kill)  # a daemon that ignores SIGTERM fails, not hangs
        killer.start()
        lines += proc.stdout.readlines()  # not communicate(): it would skip what readline() buffered
        proc.wait()
        killer.cancel()
    finally:
        proc.kill()
        sock.close()
    assert proc.returncode == 0, "".join(lines)
    acked = {int(m.group(1)) for line in lines if (m := re.match(r"INFO verdict id=(\d+) ", line))}
    stopped = next(line for line in lines if "stopped: triggers=" in line)
    db = sqlite3.connect(tmp_path / "data" / "verdicts.sqlite3")
    ids = {row[0] for row in db.execute("SELECT id FROM verdicts")}
    assert acked <= ids and len(ids) == len(acked), "".join(lines[-30:])  # every acknowledged verdict recorded, none unlogged
    assert f"triggers={len(ids)} " in stopped
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sigterm_stops_the_daemon_even_when_its_supervisor_stopped_reading(tiny_line, tiny_bundle, tmp_path):
    """A notify socket nobody reads fills up (10 datagrams here); the daemon must still stop."""
    # A ping and a status every 0.1 s.
    sock, proc = _run_under_supervisor(tiny_line, tiny_bundle, tmp_path, watchdog_usec=200_000)
    try:
        assert sock.recv(4096).decode() == "READY=1"
        deadline = time.monotonic() + 30
        while sum(1 for _ in Path(tmp_path / "data").glob("verdicts.sqlite3")) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # ~60 notifications sent, none read
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        sock.close()
    assert proc.returncode == 0, out
    assert "stopped: triggers=" in out


def test_bad_config_exits_2_with_one_sentence(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text("station:\n  name: x\n  colour: blue\n")
    proc = _kenpin("run", "--config", str(path))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip() == (f"kenpin: error: {path}, line 3: station.colour: unknown key; "
                           "expected one of ['data_dir', 'name']")
