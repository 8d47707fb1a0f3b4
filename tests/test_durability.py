"""kill -9 of the real daemon while it inspects: every acknowledged verdict is in the database.

The full figure (50 kills) is `kenpin bench durability --kills 50` (BENCHMARKS.md); this is
the short version on the tiny line and bundle.
"""
from __future__ import annotations

import sqlite3

from device.bench import durability as k9


def test_kill9_loses_no_acknowledged_verdict(tiny_line, tiny_bundle, tmp_path):
    replay = k9.mixed_replay(tiny_line, tmp_path / "replay")
    rounds = k9.run(tmp_path / "run", tiny_bundle, replay, kills=3, seed=1, max_after_s=1.0, log=lambda *_: None)
    s = k9.summary(rounds)
    assert s["kills"] == 3 and s["acknowledged"] >= 3
    assert s["acknowledged_missing"] == 0 and s["integrity_ok"] == 3 and s["missing_images"] == 0
    # Killed mid-work: the WAL held committed, uncheckpointed pages each time, and the defects'
    # images were being written.
    assert s["kills_with_uncheckpointed_wal"] == 3
    db = sqlite3.connect(tmp_path / "run" / "data" / "verdicts.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM verdicts WHERE verdict = 'defect' AND frame_ref IS NOT NULL").fetchone()[0] > 0


def test_the_check_notices_a_lost_or_altered_verdict(tmp_path):
    from device.station.record import VerdictRecord
    from device.station.store import VerdictStore

    with VerdictStore(tmp_path) as s:
        for score in (0.2, 0.9):
            s.record(VerdictRecord(time=1.0, station="s", bundle_id="b", verdict="ok" if score < 0.5 else "defect",
                                   score=score, threshold=0.5, raw_score=score, raw_threshold=0.5, quality=None,
                                   latency_ms=1.0, trigger_source="free-run"))
    check = k9.check
    db, images = tmp_path / "verdicts.sqlite3", tmp_path / "images"
    assert check(db, images, {1: ("ok", 0.2), 2: ("defect", 0.9)})[:3] == ([], "ok", 0)
    assert check(db, images, {1: ("ok", 0.2), 3: ("ok", 0.1)})[0] == [3]  # acknowledged, not recorded
    assert check(db, images, {2: ("ok", 0.9)})[0] == [2]  # recorded differently than acknowledged
