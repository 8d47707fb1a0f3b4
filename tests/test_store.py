"""The station's record: durable verdict rows, kept images and their budget, queries, audit trail."""
from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from device.station.record import VerdictRecord
from device.station.store import VerdictStore
from device.station.store_schema import SCHEMA_VERSION

T0 = 1_800_000_000.0  # a fixed "now" on an hour boundary, so buckets are predictable


def rec(verdict: str = "ok", score: float = 0.2, t: float = T0, trigger_id: int | None = None,
        latency_ms: float = 5.0) -> VerdictRecord:
    return VerdictRecord(time=t, station="line-1", bundle_id="b1", verdict=verdict, score=score, threshold=0.5,
                         raw_score=score * 2, raw_threshold=1.0, quality=None, latency_ms=latency_ms,
                         trigger_source="software", trigger_id=trigger_id)


def frame(seed: int = 0, size: int = 96) -> np.ndarray:
    img = np.full((size, size, 3), 60, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, (200, 180, 40), -1)
    return np.clip(img.astype(int) + np.random.default_rng(seed).integers(-5, 5, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def store(tmp_path):
    s = VerdictStore(tmp_path / "data", ok_image_fraction=0.0)
    yield s
    s.close()


def test_record_is_committed_before_it_returns(store):
    out = store.record(rec("defect", 0.9, trigger_id=7))
    assert out.id == 1 and out.trigger_id == 7
    # A separate connection (another process would see the same) finds the row at once.
    row = sqlite3.connect(store.db_path).execute("SELECT verdict, score, trigger_id FROM verdicts").fetchall()
    assert row == [("defect", 0.9, 7)]
    mode = sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_records_survive_reopening_and_ids_keep_counting(tmp_path):
    with VerdictStore(tmp_path) as s:
        ids = [s.record(rec(t=T0 + i)).id for i in range(5)]
    with VerdictStore(tmp_path) as s:
        assert [r.id for r in s.query()] == ids[::-1]
        assert s.record(rec()).id == 6
        assert s.get(3).time == T0 + 2


def test_defects_and_retakes_keep_frame_and_heat_overlay(store):
    hot = np.zeros((96, 96), np.float32)
    hot[10:30, 60:90] = 3.0  # heat is in units of the threshold: above 2 is drawn hottest
    for verdict in ("defect", "retake"):
        out = store.record(rec(verdict, 0.8), frame(), hot)
        img = cv2.imread(str(store.image_path(out.frame_ref)))
        heat = cv2.imread(str(store.image_path(out.heatmap_ref)))
        assert img.shape == heat.shape == (96, 96, 3)
        # The hot patch is red in the overlay, the cold corner is not.
        b, g, r = heat[20, 75].astype(int)
        assert r > b + 60
        # Where nothing is near the threshold the operator sees the part itself, not a tint.
        assert np.abs(heat[70:90, 5:25].astype(int) - img[70:90, 5:25].astype(int)).mean() < 4
    assert store.record(rec("ok"), frame(), hot).frame_ref is None  # ok_image_fraction=0


def test_ok_images_are_sampled_by_seed(tmp_path):
    def kept(seed: int) -> list[bool]:
        with VerdictStore(tmp_path / f"s{seed}-{time.monotonic_ns()}", ok_image_fraction=0.3, seed=seed) as s:
            return [s.record(rec(), frame(i, 32)).frame_ref is not None for i in range(120)]

    a, b, c = kept(1), kept(1), kept(2)
    assert a == b and a != c
    assert 20 <= sum(a) <= 52  # ~30 % of 120


def test_retention_drops_oldest_ok_images_first_and_keeps_rows(tmp_path):
    f = frame(size=128)
    s = VerdictStore(tmp_path, image_budget_mb=0.02, ok_image_fraction=1.0)
    one = s.record(rec("ok"), f)
    per_image = s.image_path(one.frame_ref).stat().st_size
    oks = [one] + [s.record(rec("ok", t=T0 + i), f) for i in range(1, 10)]
    defects = [s.record(rec("defect", 0.9, t=T0 + 10 + i), f) for i in range(10)]
    budget = s.budget_bytes
    assert 20 * per_image > budget  # the test really overflows the budget
    h = s.health()
    assert h["images_bytes"] <= budget and not h["degraded"]
    now = {r.id: s.get(r.id) for r in oks + defects}
    assert len(now) == 20 and all(v is not None for v in now.values())  # every row stays
    kept_ok = [r.id for r in oks if now[r.id].frame_ref]
    kept_def = [r.id for r in defects if now[r.id].frame_ref]
    # All ok images went before any defect image; within defects, the oldest went first.
    assert kept_ok == [] and kept_def and kept_def == [r.id for r in defects][-len(kept_def):]
    for r in oks + defects:
        if not now[r.id].frame_ref:
            with pytest.raises(KenpinError):
                s.image_path(r.frame_ref)  # the file is gone with its ref
    on_disk = sum(p.stat().st_size for p in (tmp_path / "images").rglob("*.jpg"))
    assert on_disk == h["images_bytes"]
    s.close()


def test_query_filters_and_pages_newest_first(store):
    for i in range(30):
        store.record(rec("defect" if i % 3 == 0 else "ok", score=i / 30, t=T0 + i))
    page1 = store.query(limit=4)
    assert [r.id for r in page1] == [30, 29, 28, 27]
    page2 = store.query(limit=4, before_id=page1[-1].id)
    assert [r.id for r in page2] == [26, 25, 24, 23]
    assert {r.verdict for r in store.query(verdict="defect")} == {"defect"} and len(store.query(verdict="defect")) == 10
    window = store.query(since=T0 + 5, until=T0 + 10)
    assert sorted(r.time - T0 for r in window) == [5, 6, 7, 8, 9]
    scores = store.query(min_score=0.5, max_score=0.6)
    assert scores and all(0.5 <= r.score <= 0.6 for r in scores)
    with pytest.raises(KenpinError, match="verdict filter"):
        store.query(verdict="bad")


def test_export_csv_round_trips_a_time_range(store):
    for i in range(10):
        store.record(rec("ok", score=0.1 * i, t=T0 + i))
    buf = io.StringIO()
    assert store.export_csv(buf, since=T0 + 2, until=T0 + 6) == 4
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [float(r["time"]) - T0 for r in rows] == [2, 3, 4, 5]
    assert rows[0]["time_utc"] == "2027-01-15T08:00:02.000Z"
    assert rows[0]["verdict"] == "ok" and float(rows[1]["score"]) == pytest.approx(0.3)


def test_stats_counts_yield_histogram_and_latency_per_hour(store):
    for i in range(6):
        store.record(rec("ok", 0.12, t=T0 + 60 * i, latency_ms=4.0 + i))
    for i in range(2):
        store.record(rec("defect", 0.97, t=T0 + 60 * i))
    store.record(rec("retake", 0.5, t=T0 + 2 * 3600 + 5))  # two hours later: an empty hour between
    st = store.stats(T0, T0 + 3 * 3600)
    assert [b["start"] - T0 for b in st["buckets"]] == [0, 3600, 7200]
    first, empty, last = st["buckets"]
    assert (first["ok"], first["defect"], first["total"]) == (6, 2, 8) and first["yield"] == pytest.approx(0.75)
    assert empty["total"] == 0 and empty["yield"] is None
    assert last["retake"] == 1 and last["yield"] is None  # a retake is not a judged part
    assert st["counts"] == {"ok": 6, "defect": 2, "retake": 1, "total": 9}
    assert st["histogram"]["counts"]["ok"][2] == 6 and st["histogram"]["counts"]["defect"][19] == 2
    assert st["latency_ms"]["min"] == 4.0 and st["latency_ms"]["max"] == 9.0
    assert st["threshold"] == 0.5
    import json
    json.dumps(st)  # the dashboard serves it as is


def test_trend_shows_score_drift(store):
    for hour, base in enumerate((0.1, 0.3)):
        for i in range(100):
            store.record(rec("ok", base + i / 1000, t=T0 + hour * 3600 + i))
    tr = store.trend(T0, T0 + 7200, 3600)
    assert [b["count"] for b in tr] == [100, 100]
    assert tr[0]["mean"] == pytest.approx(0.1495) and tr[1]["mean"] == pytest.approx(0.3495)
    assert tr[0]["p95"] == pytest.approx(0.194) and tr[1]["p95"] == pytest.approx(0.394)
    store.record(rec("ok", 0.1, t=T0 + 20_000))
    with pytest.raises(KenpinError, match="bucket"):
        store.trend(0, T0 + 30_000, 1)  # 20,000 one-second buckets: too fine to draw


def test_audit_trail_is_append_only(store):
    store.audit("threshold", {"old": 0.5, "new": 0.6}, who="qe")
    store.audit("bundle", {"id": "b2"})
    log = store.audit_log()
    assert [e["event"] for e in log] == ["bundle", "threshold"]
    assert log[1]["who"] == "qe" and log[1]["detail"] == {"old": 0.5, "new": 0.6}
    db = sqlite3.connect(store.db_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET who = 'nobody'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    assert len(store.audit_log()) == 2


def test_image_path_refuses_traversal_and_missing_files(tmp_path):
    s = VerdictStore(tmp_path, ok_image_fraction=1.0)
    out = s.record(rec("ok"), frame())
    assert s.image_path(out.frame_ref).is_file()
    for bad in ("../verdicts.sqlite3", "../../etc/passwd", str(tmp_path / "verdicts.sqlite3"),
                out.frame_ref.split("/")[0] + "/../../verdicts.sqlite3", "2026-01-01/nothing.jpg", ""):
        with pytest.raises(KenpinError):
            s.image_path(bad)
    s.close()


def test_png_frames_keep_the_part_exactly_as_judged_for_retraining(tmp_path):
    part = frame(seed=3)
    with VerdictStore(tmp_path / "png", ok_image_fraction=1.0, frame_format="png") as s:
        out = s.record(rec("defect"), part, np.ones((8, 8), np.float32))
        kept = cv2.cvtColor(cv2.imread(str(s.image_path(out.frame_ref))), cv2.COLOR_BGR2RGB)
        assert out.frame_ref.endswith(".png") and np.array_equal(kept, part)  # lossless
        assert out.heatmap_ref.endswith(".jpg")  # overlays are for eyes: JPEG
    with VerdictStore(tmp_path / "png") as s:  # reopened: the PNG is ours, not swept as a stranger
        assert s.image_path(out.frame_ref).is_file()
    with VerdictStore(tmp_path / "jpg", ok_image_fraction=1.0) as s:  # the default stays JPEG (small)
        out = s.record(rec("defect"), part)
        assert out.frame_ref.endswith(".jpg")
    with pytest.raises(KenpinError, match="frame_format='tiff'"):
        VerdictStore(tmp_path / "bad", frame_format="tiff")


def test_unusable_data_dir_or_database_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(KenpinError, match=r"a-file/data.*record.data_dir"):
        VerdictStore(blocker / "data")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "verdicts.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(KenpinError, match="not a usable SQLite database"):
        VerdictStore(bad)


def test_start_up_sweeps_images_without_a_row(tmp_path):
    with VerdictStore(tmp_path, ok_image_fraction=1.0) as s:
        kept = s.record(rec("defect", 0.9), frame())
    orphan = tmp_path / "images" / "2026-01-01" / "090000_000_1_0000001_defect_frame.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    partial = tmp_path / "images" / kept.frame_ref.replace("_frame.jpg", "_heat.jpg.part")
    partial.write_bytes(b"partial")
    foreign = [tmp_path / "images" / "holiday.jpg", tmp_path / "images" / "2026-01-01" / "notes.txt"]
    for f in foreign:
        f.write_bytes(b"not the station's")
    with VerdictStore(tmp_path) as s:
        assert not orphan.exists() and not partial.exists()
        assert all(f.exists() for f in foreign)  # a data_dir shared with other files loses none of them
        assert s.image_path(kept.frame_ref).is_file()
        assert s.health()["images_bytes"] == s.image_path(kept.frame_ref).stat().st_size


def test_image_write_failure_degrades_but_records_the_verdict(tmp_path, monkeypatch):
    s = VerdictStore(tmp_path, ok_image_fraction=1.0)

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s._images, "write_image", full)
    out = s.record(rec("defect", 0.9), frame(), np.ones((96, 96), np.float32))
    assert out.id == 1 and out.frame_ref is None and out.heatmap_ref is None
    h = s.health()
    assert h["degraded"] and "No space left" in h["reason"] and h["failures"]["images"] == 2
    monkeypatch.undo()
    assert s.record(rec("defect", 0.9), frame()).frame_ref is not None
    assert not s.health()["degraded"]  # recovers by itself once images can be written again
    s.close()


def test_low_free_disk_stops_images_before_the_log_runs_out(tmp_path):
    s = VerdictStore(tmp_path, ok_image_fraction=1.0, reserve_mb=1e9)  # more than any disk has free
    out = s.record(rec("defect", 0.9), frame())
    assert out.id == 1 and out.frame_ref is None
    assert s.health()["degraded"] and "disk nearly full" in s.health()["reason"]
    assert not list((tmp_path / "images").rglob("*.jpg"))
    s.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), where the test can fill the disk; skipped without root."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_degrades_recording_and_loses_nothing_recorded(tiny_disk):
    s = VerdictStore(tiny_disk / "data", ok_image_fraction=1.0, reserve_mb=0, image_budget_mb=100)
    before = [s.record(rec("defect", 0.9, t=T0 + i), frame(i, 64)).id for i in range(5)]
    filler = tiny_disk / "filler"
    with open(filler, "wb") as fh:  # fill the disk to the last byte
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    try:
        outs = [s.record(rec("defect", 0.9, t=T0 + 10 + i), frame(i, 64), np.ones((64, 64), np.float32))
                for i in range(200)]  # never raises
        h = s.health()
        assert h["degraded"] and h["failures"]["images"] > 0
        assert all(o.frame_ref is None for o in outs[-10:])
        failed = [o for o in outs if o.id is None]
        assert failed and h["failures"]["db"] == len(failed)  # the log itself ran out of room too
    finally:
        filler.unlink()
    after = s.record(rec("defect", 0.9, t=T0 + 999), frame(), np.ones((96, 96), np.float32))
    assert after.id is not None and after.frame_ref is not None
    assert not s.health()["degraded"]
    s.close()
    with VerdictStore(tiny_disk / "data") as s2:  # everything acknowledged is there
        ids = {r.id for r in s2.query(limit=1000)}
        assert set(before) <= ids and {o.id for o in outs if o.id is not None} <= ids
        assert s2._reader().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_readers_do_not_disturb_the_recorder(tmp_path):
    s = VerdictStore(tmp_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                s.query(limit=50)
                s.stats(T0, T0 + 3600, 60)
                s.health()
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    ids = [s.record(rec(t=T0 + i / 10)).id for i in range(150)]
    stop.set()
    for t in readers:
        t.join()
    assert errors == [] and ids == list(range(1, 151))
    s.close()


@pytest.mark.slow
def test_records_at_line_rate_with_reject_images(tmp_path):
    """≥ 100 verdicts/s at 224 px with every frame kept (the worst case: all rejects)."""
    s = VerdictStore(tmp_path, ok_image_fraction=1.0)
    f, hm = frame(size=224), np.random.default_rng(0).random((224, 224)).astype(np.float32)
    t = time.perf_counter()
    for i in range(300):
        s.record(rec("defect", 0.9, t=T0 + i), f, hm)
    rate = 300 / (time.perf_counter() - t)
    s.close()
    assert rate >= 100, f"{rate:.0f} verdicts/s"


def test_record_many_commits_a_group_at_once(tmp_path):
    s = VerdictStore(tmp_path, ok_image_fraction=0.0)
    out = s.record_many([(rec("ok", t=T0 + i), None, None) for i in range(3)] + [(rec("defect", 0.9), frame(), None)])
    assert [r.id for r in out] == [1, 2, 3, 4] and out[3].frame_ref and s.image_path(out[3].frame_ref).is_file()
    assert sqlite3.connect(s.db_path).execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 4
    s.close()


def test_reader_connections_of_finished_threads_are_closed(store):
    """A web server's short-lived worker threads must not leak open database files."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc to count open files")
    store.record(rec())
    store.query(limit=1)

    def burst(n: int) -> int:
        for _ in range(n):
            t = threading.Thread(target=lambda: store.query(limit=1))
            t.start()
            t.join()
        return len(list(fds.iterdir()))

    after_5, after_45 = burst(5), burst(40)
    assert after_45 <= after_5  # without clean-up: ~3 more files (db, -wal, -shm) per thread


def test_a_database_from_a_newer_kenpin_is_refused_untouched(tmp_path):
    with VerdictStore(tmp_path) as s:
        s.record(rec())
    db = sqlite3.connect(tmp_path / "verdicts.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(KenpinError, match="newer kenpin"):
        VerdictStore(tmp_path)
    assert sqlite3.connect(tmp_path / "verdicts.sqlite3").execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 1


def test_a_record_from_before_grades_keeps_every_row_and_takes_grades_from_now_on(tmp_path):
    from dataclasses import replace

    # the schema-1 table, as kenpin wrote it before verdicts had a grade
    db = sqlite3.connect(tmp_path / "verdicts.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE verdicts (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, station TEXT NOT NULL,
            bundle_id TEXT NOT NULL, verdict TEXT NOT NULL, score REAL NOT NULL, threshold REAL NOT NULL,
            raw_score REAL NOT NULL, raw_threshold REAL NOT NULL, quality REAL, latency_ms REAL NOT NULL,
            trigger_source TEXT NOT NULL, trigger_id INTEGER, frame_ref TEXT, heatmap_ref TEXT);
        INSERT INTO verdicts (time, station, bundle_id, verdict, score, threshold, raw_score, raw_threshold,
            latency_ms, trigger_source) VALUES (1.0, 'line-1', 'b1', 'defect', 0.9, 0.5, 3.0, 2.0, 5.0, 'free-run');
        PRAGMA user_version=1;""")
    db.close()
    with VerdictStore(tmp_path) as s:
        s.record(replace(rec("defect", 0.8), grade=0.42))
        old, new = sorted(s.query(limit=10), key=lambda r: r.id)
    assert old.verdict == "defect" and old.grade is None and old.retake_reason is None and new.grade == 0.42
    assert old.product == 0 == new.product  # before products, every part was the station's one product
    assert old.frames == 1 == new.frames  # and before bursts, on the one frame its trigger took
    assert sqlite3.connect(tmp_path / "verdicts.sqlite3").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_record_from_before_bursts_keeps_every_row_as_one_frame_and_records_bursts_from_now_on(tmp_path):
    from dataclasses import replace

    # the schema-3 table, as kenpin wrote it before a verdict said how many frames it was chosen from
    db = sqlite3.connect(tmp_path / "verdicts.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE verdicts (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, station TEXT NOT NULL,
            bundle_id TEXT NOT NULL, verdict TEXT NOT NULL, score REAL NOT NULL, threshold REAL NOT NULL,
            raw_score REAL NOT NULL, raw_threshold REAL NOT NULL, quality REAL, latency_ms REAL NOT NULL,
            trigger_source TEXT NOT NULL, trigger_id INTEGER, frame_ref TEXT, heatmap_ref TEXT, grade REAL,
            retake_reason TEXT, product INTEGER NOT NULL DEFAULT 0);
        INSERT INTO verdicts (time, station, bundle_id, verdict, score, threshold, raw_score, raw_threshold,
            latency_ms, trigger_source, trigger_id, product) VALUES
            (1.0, 'line-1', 'b1', 'ok', 0.2, 0.5, 1.0, 2.0, 5.0, 'software', 1, 2),
            (2.0, 'line-1', 'b1', 'defect', 0.9, 0.5, 3.0, 2.0, 5.0, 'software', 2, 2);
        PRAGMA user_version=3;""")
    db.close()
    with VerdictStore(tmp_path) as s:
        s.record(replace(rec("ok", 0.3, trigger_id=3), frames=3))
        rows = sorted(s.query(limit=10), key=lambda r: r.id)
        csv_text = io.StringIO()
        s.export_csv(csv_text)
    assert [(r.trigger_id, r.product, r.frames) for r in rows] == [(1, 2, 1), (2, 2, 1), (3, 0, 3)]
    assert rows[-1].to_dict()["frames"] == 3  # what the verdict API, SSE and MQTT send
    assert [row["frames"] for row in csv.DictReader(io.StringIO(csv_text.getvalue()))] == ["1", "1", "3"]
    assert sqlite3.connect(tmp_path / "verdicts.sqlite3").execute("PRAGMA user_version").fetchone()[0] == 4
