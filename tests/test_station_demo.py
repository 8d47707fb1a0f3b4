"""The demo's last step: the daemon on a replay of held-out parts, with printed counts."""
from __future__ import annotations

import re
import sqlite3

from kenpin.demo import run_station


def test_demo_ends_with_the_daemon_inspecting_every_replayed_part(tiny_line, tiny_bundle, tmp_path, capsys):
    run_station(tmp_path, tiny_line, tiny_bundle)
    out = capsys.readouterr().out
    m = re.search(r"station: (\d+) parts inspected: (\d+) ok, (\d+) defect, (\d+) retake, (\d+) errors", out)
    assert m, out
    total, ok, defect, retake, errors = map(int, m.groups())
    replayed = len(list((tmp_path / "replay").iterdir()))
    assert total == replayed == ok + defect + retake and errors == 0
    db = sqlite3.connect(tmp_path / "station-data" / "verdicts.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == replayed
    assert f"kenpin run --config {tmp_path / 'station.yaml'}" in out
