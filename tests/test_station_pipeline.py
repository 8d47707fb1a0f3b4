"""The Station end to end on the tiny bundle and a replay folder: verdicts recorded, once each."""
from __future__ import annotations

import io
import logging
import queue
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.station.camera import CameraLost, ReplayCamera
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config, wait_for


@pytest.fixture()
def replay(tiny_line, tmp_path):
    return replay_folder(tiny_line, tmp_path / "replay")


def run_replay_once(cfg, camera=None, timeout=30.0) -> Station:
    st = Station(cfg, camera=camera)
    st.start()
    assert st.wait_replay_done(timeout), "the replay was not inspected in time"
    return st


@pytest.mark.parametrize("workers", [1, 3])
def test_free_run_records_every_frame_once_and_logs_after_recording(tiny_bundle, replay, tmp_path, caplog, workers):
    caplog.set_level(logging.INFO, logger="kenpin.station")
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay, extra=f"pipeline: {{workers: {workers}}}"))
    sub_status = st.status()
    st.stop()
    from device.station.store import VerdictStore

    store = VerdictStore(tmp_path / "data")
    recs = store.query(limit=100)
    assert len(recs) == 6 == sub_status["counters"]["triggers"]
    assert sub_status["counters"]["ok"] + sub_status["counters"]["defect"] == 6
    assert sub_status["counters"]["skipped_frames"] == 0  # a paced replay is never skipped
    lines = [m for m in caplog.messages if m.startswith("verdict id=")]
    logged_ids = {int(re.search(r"id=(\d+)", m).group(1)) for m in lines}
    assert logged_ids == {r.id for r in recs}
    for r in recs:
        assert r.station == "test-line" and r.threshold == 0.5 and r.latency_ms > 0
        assert r.frame_ref is not None  # ok_image_fraction 1.0: all kept
        assert (r.heatmap_ref is not None) == (r.verdict == "defect")
    store.close()


def test_threshold_change_takes_effect_and_undo_restores(tiny_bundle, replay, tmp_path):
    cfg = station_config(tmp_path, tiny_bundle, replay, mode="software")
    st = Station(cfg)
    st.start()
    try:
        sub = st.subscribe()
        st.set_threshold(0.999999, who="qe")
        st.trigger()
        assert sub.get(timeout=10).verdict == "ok" and st.threshold == 0.999999
        st.set_threshold(1e-6, who="qe")
        st.trigger()
        assert sub.get(timeout=10).verdict == "defect"
        assert st.undo_threshold("qe") == 0.999999
        with pytest.raises(KenpinError, match="strictly between 0 and 1"):
            st.set_threshold(1.0, who="qe")
        events = [a["event"] for a in st.store.audit_log(20)]
        assert events.count("threshold") == 2 and "threshold_undo" in events
    finally:
        st.stop()


@pytest.mark.parametrize("workers", [1, 3])
def test_software_triggers_each_get_exactly_one_verdict(tiny_bundle, replay, tmp_path, workers):
    # With parallel workers too: one verdict per trigger, in the order the parts came.
    st = Station(station_config(tmp_path, tiny_bundle, replay, mode="software", loop=True,
                                extra=f"pipeline: {{workers: {workers}}}"))
    st.start()
    try:
        sub = st.subscribe(maxsize=1000)
        ids = [st.trigger() for _ in range(40)]
        got = [sub.get(timeout=20).trigger_id for _ in ids]
        with pytest.raises(queue.Empty):
            sub.get(timeout=0.3)  # nothing doubled
        assert got == ids
        assert st.status()["queues"]["triggers_max_backlog"] >= 1
        if workers > 1:  # the searches run with one BLAS thread each while the workers run
            from threadpoolctl import threadpool_info
            assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    finally:
        st.stop()


def test_slow_subscriber_loses_events_counted_without_stalling(tiny_bundle, replay, tmp_path):
    st = Station(station_config(tmp_path, tiny_bundle, replay))
    slow = st.subscribe(maxsize=2)
    st.start()
    assert st.wait_replay_done(30)
    st.stop()
    assert slow.dropped == 4 and st.counters.snapshot()[0]["triggers"] == 6


def test_live_frame_is_a_jpeg_with_the_last_verdict(tiny_bundle, replay, tmp_path):
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay))
    try:
        jpeg, last = st.latest_frame()
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (160, 160, 3) and last is not None and last.id is not None
    finally:
        st.stop()


def test_bundle_swap_verifies_and_rolls_back(tiny_bundle, replay, tmp_path):
    st = Station(station_config(tmp_path, tiny_bundle, replay, mode="software", loop=True))
    st.start()
    try:
        bad = tmp_path / "bad_bundle"
        shutil.copytree(tiny_bundle, bad)
        (bad / "bank_int8-w8.npy").write_bytes(b"tampered")
        with pytest.raises(KenpinError, match="SHA-256 does not match"):
            st.activate_bundle(bad, who="qe")
        assert st.status()["bundle"]["path"] == str(tiny_bundle)
        good = tmp_path / "new_bundle"
        shutil.copytree(tiny_bundle, good)
        assert st.activate_bundle(good, who="qe")["path"] == str(good)
        sub = st.subscribe()
        st.trigger()
        assert sub.get(timeout=10).id is not None  # the swapped-in model judges the next part
        assert st.rollback_bundle("qe")["path"] == str(tiny_bundle)
        events = [a["event"] for a in st.store.audit_log(20)]
        assert {"bundle_refused", "bundle_activated", "bundle_rolled_back"} <= set(events)
    finally:
        st.stop()


def test_mark_wrong_keeps_feedback_in_mvtec_layout(tiny_bundle, replay, tmp_path):
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay))
    try:
        rec = st.store.query(limit=1)[0]
        path = st.mark_wrong(rec.id, "good" if rec.verdict == "defect" else "defect", who="qe")
        assert path.parent.parent.name == "train" and path.is_file()
        labels = (tmp_path / "data" / "feedback" / "labels.csv").read_text().splitlines()
        assert labels[0].startswith("image,label") and f",{rec.id}," in labels[1]
        with pytest.raises(KenpinError, match="no such verdict"):
            st.mark_wrong(99999, "good", who="qe")
    finally:
        st.stop()


def test_corrupt_replay_images_are_skipped_and_counted(tiny_bundle, replay, tmp_path, caplog):
    (replay / "zzz_corrupt.png").write_bytes(b"not a png")
    cam = ReplayCamera(replay, 0, loop=False)
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay), camera=cam)
    st.stop()
    assert cam.skipped_images == 1 and st.counters.snapshot()[0]["triggers"] == 6
    assert any("zzz_corrupt.png" in m for m in caplog.messages)


def test_missing_camera_and_empty_replay_are_one_sentence(tiny_bundle, tmp_path):
    with pytest.raises(KenpinError, match="folder not found"):
        Station(station_config(tmp_path, tiny_bundle, tmp_path / "nowhere")).start()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KenpinError, match="no readable images"):
        Station(station_config(tmp_path, tiny_bundle, empty)).start()
    cfg = station_config(tmp_path, tiny_bundle, empty, extra="camera: {type: opencv, opencv: {source: /dev/video99}}")
    with pytest.raises(KenpinError, match="cannot be opened"):
        Station(cfg).start()


class FlakyCamera(ReplayCamera):
    """Loses the connection after 3 frames, once."""

    def __init__(self, folder):
        super().__init__(folder, 0, loop=False)
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads == 4:
            raise CameraLost("cable pulled")
        return super().read()


def test_camera_loss_reconnects_with_backoff_and_counts(tiny_bundle, replay, tmp_path):
    cfg = station_config(tmp_path, tiny_bundle, replay, extra="camera: {reconnect_initial_s: 0.05, reconnect_max_s: 0.1}")
    cam = FlakyCamera(replay)
    st = Station(cfg, camera=cam)
    st.start()
    # ReplayCamera.open() rewinds, so after the reconnect the whole folder is replayed.
    assert wait_for(lambda: st.camera_state.finished, 30)
    assert st.wait_replay_done(10)
    status = st.status()
    st.stop()
    assert status["camera"]["reconnects"] == 1 and status["camera"]["connected"]
    assert status["counters"]["triggers"] == 3 + 6


def test_unwritable_data_dir_is_one_sentence(tiny_bundle, replay, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = station_config(tmp_path, tiny_bundle, replay, extra=f"station: {{name: t, data_dir: {blocker / 'data'}}}")
    with pytest.raises(KenpinError, match=str(blocker)):
        Station(cfg)


class FakeGate:
    """Stands in for issue 4's QualityGate: quality = mean brightness / full scale, floor 0.2."""

    floor = 0.2
    follows_verdicts = True

    def score(self, rgb, bits=None):
        return self.assess(rgb, bits)[0]

    def passes(self, quality):
        return quality >= self.floor

    def retakes(self, quality, z):  # floors only: no verdict guard
        return not self.passes(quality)

    def assess(self, rgb, bits=None):
        full = 2 ** (bits or rgb.dtype.itemsize * 8) - 1
        return float(rgb.mean() / full), "dark"


def _dark_first(replay):
    dark = replay / "000_dark.png"
    cv2.imwrite(str(dark), np.full((160, 160, 3), 20, np.uint8))
    return dark


def test_quality_gate_below_floor_gives_retake_never_ok(tiny_bundle, replay, tmp_path, monkeypatch):
    """A triggered part whose frame the gate finds unusable is answered with a retake, recorded and kept."""
    import device.runtime as runtime

    monkeypatch.setattr(runtime, "load_rankers", lambda bundle: (FakeGate(), None))
    _dark_first(replay)
    st = Station(station_config(tmp_path, tiny_bundle, replay, mode="software", extra="decision: {threshold: 0.000001}"))
    st.start()
    try:
        sub = st.subscribe()
        ids = [st.trigger() for _ in range(7)]
        recs = [sub.get(timeout=20) for _ in ids]
        status = st.status()
    finally:
        st.stop()
    first = min(recs, key=lambda r: r.id)
    assert first.trigger_id == ids[0] and first.verdict == "retake" and first.quality < 0.2
    assert first.frame_ref is not None and first.retake_reason == "dark"
    assert all(r.retake_reason is None and r.verdict == "defect" for r in recs if r is not first)
    assert status["counters"]["retake"] == 1 and status["bundle"]["quality_gate"]
    assert status["counters"]["gate_skipped_frames"] == 0  # a trigger is answered, never skipped
    assert all(r.quality is not None for r in recs)


def test_free_run_skips_a_frame_the_gate_would_retake_without_a_verdict_or_a_pulse(tiny_bundle, replay, tmp_path,
                                                                                   monkeypatch):
    import device.runtime as runtime
    from device.station.actuator import NullActuator

    monkeypatch.setattr(runtime, "load_rankers", lambda bundle: (FakeGate(), None))
    fired: list[str] = []  # what the reject output was told, verdict by verdict
    monkeypatch.setattr(NullActuator, "fire", lambda self, verdict, *a, **k: fired.append(verdict))
    _dark_first(replay)
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay, extra="decision: {threshold: 0.000001}"))
    recs = st.store.query(limit=100)
    status = st.status()
    st.stop()
    # 7 frames: the dark one skipped and counted; the 6 others judged (each a defect at this threshold) and pulsed
    assert len(recs) == 6 and all(r.verdict == "defect" and r.quality >= 0.2 for r in recs)
    assert status["counters"]["gate_skipped_frames"] == 1 and status["counters"]["retake"] == 0
    assert status["counters"]["triggers"] == 6 and fired == ["defect"] * 6


class GuardingGate(FakeGate):
    """A gate that follows verdicts: it also retakes a passing frame whose score lies near the threshold
    (here: every frame darker than mid-grey, wherever its score is, to make the point)."""

    def retakes(self, quality, z):
        return not self.passes(quality) or quality < 0.5


def test_free_run_skips_a_frame_the_verdict_guard_retakes_once_judged(tiny_bundle, replay, tmp_path, monkeypatch):
    import device.runtime as runtime

    monkeypatch.setattr(runtime, "load_rankers", lambda bundle: (GuardingGate(), None))
    _dark_first(replay)
    frames = [read_rgb(p) for p in list_images(replay)]
    guarded = sum(0.2 <= f.mean() / 255 < 0.5 for f in frames)  # past the floor, retaken by the guard
    assert guarded and sum(f.mean() / 255 < 0.2 for f in frames) == 1
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay))
    recs, status = st.store.query(limit=100), st.status()
    st.stop()
    c = status["counters"]
    assert all(r.verdict != "retake" and r.quality >= 0.5 for r in recs) and len(recs) == len(frames) - 1 - guarded
    assert c["gate_skipped_frames"] == 1 + guarded and c["triggers"] == len(recs) and c["retake"] == 0


class FakeGrader:
    """Stands in for a grade model: every defect ranks above 70 % of the rated parts."""

    def grade_judged(self, rgb, patches, distances, grid):
        assert patches.shape[0] == distances.shape[0] == grid[0] * grid[1]
        return 1.0

    def percentile(self, grade):
        return 0.7


def test_defects_carry_a_grade_when_the_bundle_has_one_and_ok_parts_do_not(tiny_bundle, replay, tmp_path, monkeypatch):
    import device.runtime as runtime

    monkeypatch.setattr(runtime, "load_rankers", lambda bundle: (None, FakeGrader()))
    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay))
    recs = st.store.query(limit=100)
    status = st.status()
    csv_text = io.StringIO()
    st.store.export_csv(csv_text)
    st.stop()
    assert {r.verdict for r in recs} == {"ok", "defect"} and status["bundle"]["grade"]
    assert all(r.grade == 0.7 for r in recs if r.verdict == "defect")
    assert all(r.grade is None for r in recs if r.verdict != "defect")
    assert "grade" in csv_text.getvalue().splitlines()[0].split(",")


def test_parallel_workers_hand_decisions_to_the_recorder_in_capture_order():
    from device.station.pipeline import InOrder

    out: queue.Queue = queue.Queue()
    order = InOrder(out, producers=2)
    order.done(1, "b")  # finished first, held until 0 is decided
    assert out.empty()
    order.done(0, "a")
    order.done(3, "d")
    order.done(2, None)  # a failed frame does not hold back the ones behind it
    order.finished()
    assert out.empty() is False and [out.get_nowait() for _ in range(3)] == ["a", "b", "d"]
    order.finished()
    assert out.get_nowait() is None  # the end marker once every worker is done


def test_a_slow_disk_gets_the_waiting_verdicts_in_one_commit_in_order():
    import dataclasses
    import time
    from types import SimpleNamespace

    from device.station.counters import Counters
    from device.station.model import Decision
    from device.station.pipeline import RecorderWorker
    from device.station.record import VerdictRecord

    class SlowStore:  # every commit costs a sync of 20 ms, like an SD card
        def __init__(self):
            self.commits, self.ids = 0, 0

        def record_many(self, items):
            time.sleep(0.02)
            self.commits += 1
            out = []
            for rec, _frame, _heat in items:
                self.ids += 1
                out.append(dataclasses.replace(rec, id=self.ids))
            return out

    fired, seen = [], []
    actuator = SimpleNamespace(fire=lambda verdict, **timing: fired.append(verdict))
    outq: queue.Queue = queue.Queue()
    product = SimpleNamespace(pulse_ms=50.0, delay_ms=0.0)
    for i in range(40):
        rec = VerdictRecord(0.0, "line", "b", "defect" if i % 5 == 0 else "ok", 0.1, 0.5, 1.0, 2.0, None, 1.0,
                            "software", i)
        outq.put(Decision(SimpleNamespace(kept_image=None, product=product), rec, None))
    outq.put(None)
    store = SlowStore()
    w = RecorderWorker(outq, store, actuator, Counters(), seen.append)
    w.start()
    w.join(10)
    assert not w.is_alive()
    assert [r.trigger_id for r in seen] == list(range(40)) and [r.id for r in seen] == list(range(1, 41))
    assert fired == ["defect" if i % 5 == 0 else "ok" for i in range(40)]
    assert store.commits <= 3  # what waited went in together (16 per commit at most), not 40 syncs


def _restart(cfg) -> Station:
    st = Station(cfg)
    st.start()
    return st


def test_dashboard_changes_survive_a_restart_until_the_config_is_edited(tiny_bundle, replay, tmp_path):
    cfg = station_config(tmp_path, tiny_bundle, replay, mode="software")
    st = _restart(cfg)
    swapped = tmp_path / "new_bundle"
    shutil.copytree(tiny_bundle, swapped)
    try:
        st.activate_bundle(swapped, who="qe")
        st.set_threshold(0.7, who="qe")
    finally:
        st.stop()
    st = _restart(cfg)  # e.g. after a power cut
    try:
        assert st.threshold == 0.7 and st.status()["bundle"]["path"] == str(swapped)
        assert st.store.audit_log(1)[0]["detail"]["restored_from_dashboard"] is True
    finally:
        st.stop()
    edited = station_config(tmp_path, tiny_bundle, replay, mode="software", extra="decision: {threshold: 0.6}")
    st = _restart(edited)  # plant IT edited the config: it wins
    try:
        assert st.threshold == 0.6 and st.status()["bundle"]["path"] == str(tiny_bundle)
    finally:
        st.stop()


def test_a_restored_bundle_that_is_gone_falls_back_to_the_config_and_says_so(tiny_bundle, replay, tmp_path):
    cfg = station_config(tmp_path, tiny_bundle, replay, mode="software")
    swapped = tmp_path / "new_bundle"
    shutil.copytree(tiny_bundle, swapped)
    st = _restart(cfg)
    try:
        st.activate_bundle(swapped, who="qe")
    finally:
        st.stop()
    shutil.rmtree(swapped)
    st = _restart(cfg)
    try:
        assert st.status()["bundle"]["path"] == str(tiny_bundle)
        assert "restore_refused" in [a["event"] for a in st.store.audit_log(5)]
    finally:
        st.stop()


def test_below_the_configured_disk_reserve_images_stop_but_verdicts_flow(tiny_bundle, replay, tmp_path):
    from device.station.config import parse_config

    cfg = parse_config(f"""
station: {{name: test-line, data_dir: {tmp_path / 'data'}}}
bundle: {{path: {tiny_bundle}, precision: int8, threads: 1}}
camera: {{type: replay, replay: {{folder: {replay}, fps: 0, loop: false}}}}
record: {{ok_image_fraction: 1.0, reserve_mb: 1.0e+12}}
dashboard: {{enabled: false}}
""", "test.yaml")
    st = run_replay_once(cfg)
    try:
        recs = st.store.query(limit=100)
        health = st.store.health()
    finally:
        st.stop()
    assert len(recs) == 6 and all(r.id is not None and r.frame_ref is None for r in recs)
    assert "disk nearly full" in str(health)


def test_the_daemon_records_the_scores_kenpin_eval_reports(tiny_bundle, tiny_line, tmp_path):
    """One judging path: the station's recorded score of a part is eval's score of the same image and variant."""
    from device.selfcheck import open_checked
    from training.evaluate import metrics, score_test_set

    st = run_replay_once(station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay")))
    variant = st.status()["bundle"]["precision"]
    recs = sorted(st.store.query(limit=100), key=lambda r: r.id)
    st.stop()
    inspector, _ = open_checked(tiny_bundle, variant, threads=1)
    evaluated = {Path(i["path"]): i for i in metrics(score_test_set(inspector, tiny_line))["images"]}
    # what replay_folder copied, in its order: the first 4 good test parts, then the first 2 cracked ones
    sources = sorted((tiny_line / "test" / "good").iterdir())[:4] + sorted((tiny_line / "test" / "crack").iterdir())[:2]
    assert len(recs) == len(sources) == 6
    for rec, src in zip(recs, sources):
        assert rec.raw_score == pytest.approx(evaluated[src]["raw_score"], rel=1e-6)
        assert rec.score == pytest.approx(evaluated[src]["score"], rel=1e-6) and rec.verdict == evaluated[src]["verdict"]
