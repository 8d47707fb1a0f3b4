"""Burst capture (``trigger.burst``): N camera frames per trigger, the quality gate's best of them judged,
every trigger answered once; a gate calibrated the old way still gates and says so once."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.bundle import MANIFEST, load_bundle, manifest_digest
from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.quality import QualityGate
from device.station.config import parse_config
from device.station.station import Station
from device.station.store import VerdictStore
from kenpin.bench_inputs import TINY_RANKER_RECIPE
from tests.station_helpers import station_config


@pytest.fixture(scope="module")
def gated(tiny_bundle, tiny_line, tmp_path_factory):
    """A copy of the tiny bundle with a quality gate added by the CLI."""
    from kenpin.cli import main

    work = tmp_path_factory.mktemp("gated")
    (work / "recipe.yaml").write_text(TINY_RANKER_RECIPE)
    dst = work / "bundle"
    shutil.copytree(tiny_bundle, dst)
    assert main(["train-ranker", "--bundle", str(dst), "--data", str(tiny_line), "--recipe",
                 str(work / "recipe.yaml")]) == 0
    return dst


@pytest.fixture(scope="module")
def floors_gated(gated, tmp_path_factory):
    """The gated bundle gating by its floors alone. The burst tests are about which frame is judged; a gate
    trained for seconds on the tiny line also retakes most clean test frames by its verdict guard (its
    dozen calibration frames do not show their spread), which test_quality_gate covers."""
    return calibrated_the_old_way(gated, tmp_path_factory.mktemp("floors") / "bundle")


def blurred(rgb: np.ndarray) -> np.ndarray:
    """Heavy defocus, no training involved: a part the lens lost."""
    return cv2.GaussianBlur(rgb, (0, 0), 6)


def overexposed(rgb: np.ndarray) -> np.ndarray:
    """Three stops too much light: most of the part clipped white."""
    return np.clip(rgb.astype(np.int32) * 3, 0, 255).astype(np.uint8)


def degraded_replay(tiny_line: Path, dest: Path, gate: QualityGate) -> list[np.ndarray]:
    """Four parts (three good, one defective), three frames each in name order: one clean, one blurred, one
    overexposed, the clean one first, second, third, second. Returns the clean frames in part order.

    The test's own premise: the gate passes the clean frame and ranks it above both degraded ones, so
    the parts are the first of the test images for which it does (a gate trained for seconds on a
    tiny line puts the odd clean frame under its floor)."""
    dest.mkdir(parents=True)

    def usable(path: Path) -> bool:
        clean = read_rgb(path)
        q = [gate.score(f) for f in (clean, blurred(clean), overexposed(clean))]
        return gate.passes(q[0]) and not gate.passes(q[1]) and not gate.passes(q[2])

    good = [p for p in list_images(tiny_line / "test" / "good") if usable(p)][:3]
    defects = sorted(d for d in (tiny_line / "test").iterdir() if d.name != "good")
    chip = [p for d in defects for p in list_images(d) if usable(p)][:1]
    assert len(good) == 3 and len(chip) == 1, "the gate passes too few clean test frames for this test"
    cleans = []
    for i, path in enumerate(good + chip):
        clean = read_rgb(path)
        frames = [blurred(clean), overexposed(clean)]
        frames.insert([0, 1, 2, 1][i], clean)
        for j, f in enumerate(frames):
            cv2.imwrite(str(dest / f"{i:02d}_{j}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        cleans.append(clean)
    return cleans


def judged_frames(monkeypatch) -> list[np.ndarray]:
    """Every frame the station's judgement is given, in order (the self-check's probes first)."""
    import device.runtime as runtime

    judged: list[np.ndarray] = []
    judge = runtime.Inspector.judge
    monkeypatch.setattr(runtime.Inspector, "judge", lambda self, frame, *a, **k: judged.append(frame.copy())
                        or judge(self, frame, *a, **k))
    return judged


def run_triggers(cfg, n: int) -> tuple[Station, list, dict]:
    """Start, queue ``n`` triggers at once (a backlog behind the burst), collect their verdicts, stop."""
    st = Station(cfg)
    st.start()
    try:
        sub = st.subscribe()
        ids = [st.trigger() for _ in range(n)]
        recs = [sub.get(timeout=30) for _ in ids]
        status = st.status()
    finally:
        st.stop()
    assert sorted(r.trigger_id for r in recs) == ids  # every trigger answered, once
    return st, sorted(recs, key=lambda r: r.trigger_id), status


def test_a_burst_of_three_is_judged_on_the_clean_frame_of_each_part(floors_gated, tiny_line, tmp_path, monkeypatch):
    gate = QualityGate.from_bundle(load_bundle(floors_gated))
    cleans = degraded_replay(tiny_line, tmp_path / "replay", gate)
    judged = judged_frames(monkeypatch)
    st, recs, status = run_triggers(station_config(tmp_path, floors_gated, tmp_path / "replay", mode="software",
                                                   extra="trigger: {mode: software, burst: 3}"), len(cleans))
    assert len(judged) >= 4 and all(np.array_equal(j, c) for j, c in zip(judged[-4:], cleans))
    for rec, clean in zip(recs, cleans):
        assert rec.frames == 3 and rec.verdict != "retake" and rec.retake_reason is None
        assert rec.quality == pytest.approx(gate.score(clean), abs=1e-5)
    assert recs[-1].verdict == "defect"  # the chipped part, judged sharp and exposed right
    c = status["counters"]
    assert c["triggers"] == 4 and c["burst_frames"] == 12 and c["trigger_errors"] == 0 and c["retake"] == 0
    assert st.camera_state.frame_number == 12  # every frame of every burst went to the live view
    with VerdictStore(tmp_path / "data") as store:  # as recorded
        assert [r.frames for r in store.query(limit=10)] == [3] * 4


def test_burst_one_judges_each_trigger_on_its_one_frame_as_before(floors_gated, tiny_line, tmp_path, monkeypatch):
    gate = QualityGate.from_bundle(load_bundle(floors_gated))
    cleans = degraded_replay(tiny_line, tmp_path / "replay", gate)
    frames = [read_rgb(p) for p in list_images(tmp_path / "replay")]
    judged = judged_frames(monkeypatch)
    st, recs, status = run_triggers(station_config(tmp_path, floors_gated, tmp_path / "replay", mode="software"), 12)
    assert all(np.array_equal(j, f) for j, f in zip(judged[-12:], frames))
    assert all(r.frames == 1 for r in recs)
    assert [r.verdict == "retake" for r in recs] == [not gate.passes(gate.score(f)) for f in frames]
    assert sum(r.verdict == "retake" for r in recs) == 12 - len(cleans)  # each degraded frame: a retake, recorded
    assert status["counters"]["burst_frames"] == 12 and st.camera_state.frame_number == 12


def test_a_burst_cut_short_by_the_end_of_the_replay_still_answers_its_trigger(gated, tiny_line, tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    for p in list_images(tiny_line / "test" / "good")[:4]:
        shutil.copy(p, replay / p.name)
    st = Station(station_config(tmp_path, gated, replay, mode="software", extra="trigger: {mode: software, burst: 3}"))
    st.start()
    try:
        sub = st.subscribe()
        ids = [st.trigger(), st.trigger()]
        recs = [sub.get(timeout=30) for _ in ids]
        assert st.wait_replay_done(10)
    finally:
        st.stop()
    assert [(r.trigger_id, r.frames) for r in recs] == [(ids[0], 3), (ids[1], 1)]  # 4 frames: 3, then the last one


@pytest.mark.parametrize("trigger, message", [
    ("{mode: software, burst: 0}", r"trigger\.burst = 0: must be between 1 \(one frame per trigger\) and 10"),
    ("{mode: gpio, burst: 11}", r"trigger\.burst = 11: must be between 1 \(one frame per trigger\) and 10"),
    ("{mode: software, burst: three}", r"trigger\.burst = 'three': expected a whole number"),
    ("{burst: 3}", r"trigger\.burst = 3: a burst is taken per trigger, and free-run has none"),
])
def test_a_bad_burst_is_one_sentence_naming_the_key(trigger, message):
    with pytest.raises(KenpinError, match=message) as e:
        parse_config(f"trigger: {trigger}\n", "st.yaml")
    assert str(e.value).startswith("st.yaml, line 1: ") and "\n" not in str(e.value)


def test_a_burst_without_a_quality_gate_is_refused_at_start(tiny_bundle, gated, tmp_path, capsys):
    from kenpin.cli import main

    replay = tmp_path / "replay"
    replay.mkdir()
    cv2.imwrite(str(replay / "a.png"), np.zeros((64, 64, 3), np.uint8))
    config = tmp_path / "station.yaml"
    config.write_text(f"station: {{name: t, data_dir: {tmp_path / 'data'}}}\nbundle: {{path: {tiny_bundle}}}\n"
                      f"camera: {{replay: {{folder: {replay}}}}}\ntrigger: {{mode: software, burst: 3}}\n"
                      "dashboard: {enabled: false}\n")
    assert main(["run", "--config", str(config), "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "this bundle has no quality gate, and trigger.burst = 3 (a burst needs a quality " \
                                     "gate to choose its best frame by)" in err, err
    # with products, the one whose bundle has no gate is named
    products = (f"products:\n  - {{number: 1, name: bolt, bundle: {gated}}}\n"
                f"  - {{number: 2, name: nut, bundle: {tiny_bundle}}}\n")
    st = Station(station_config(tmp_path / "p", gated, replay, mode="software",
                                extra=products + "trigger: {mode: software, burst: 3}"))
    with pytest.raises(KenpinError, match=r"product 2 \(nut\) cannot start with its bundle .*no quality gate, and "
                                          r"trigger\.burst = 3"):
        st.start()


def calibrated_the_old_way(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` whose gate has floors from clean frames only: no verdict-flip calibration
    in its manifest, as in bundles from before it (the manifest re-signed)."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / MANIFEST).read_text())
    del m["rankers"]["quality"]["calibration"]["verdict_flips"]
    m["manifest_sha256"] = manifest_digest(m)
    (dest / MANIFEST).write_text(json.dumps(m))
    return dest


def test_a_gate_calibrated_the_old_way_gates_as_before_and_says_so_once(gated, tiny_line, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kenpin.station")
    new = QualityGate.from_bundle(load_bundle(gated))
    old = QualityGate.from_bundle(load_bundle(calibrated_the_old_way(gated, tmp_path / "old-gate")))
    assert not old.follows_verdicts and new.follows_verdicts
    replay = tmp_path / "replay"
    replay.mkdir()
    for p in list_images(tiny_line / "test" / "good")[:3]:
        shutil.copy(p, replay / p.name)
    shutil.copy(replay / "000.png", replay / "003.png")
    cv2.imwrite(str(replay / "004.png"), cv2.cvtColor(blurred(read_rgb(replay / "000.png")), cv2.COLOR_RGB2BGR))
    counts = {}
    for name, bundle in (("old", tmp_path / "old-gate"), ("new", gated)):
        caplog.clear()
        _, recs, _ = run_triggers(station_config(tmp_path / name, bundle, replay, mode="software"), 5)
        counts[name] = sum("calibrated the old way" in m for m in caplog.messages)
        assert [r.verdict for r in recs][-1] == "retake" and all(r.quality is not None for r in recs)
    assert counts == {"old": 1, "new": 0}  # once, at load; never per frame


def test_a_bundle_without_a_gate_is_refused_as_a_swap_while_bursts_run(gated, tiny_bundle, tiny_line, tmp_path):
    replay = tmp_path / "replay"
    replay.mkdir()
    shutil.copy(list_images(tiny_line / "test" / "good")[0], replay / "a.png")
    st = Station(station_config(tmp_path, gated, replay, mode="software", loop=True,
                                extra="trigger: {mode: software, burst: 2}"))
    st.start()
    try:
        with pytest.raises(KenpinError, match=r"no quality gate, and trigger\.burst = 2"):
            st.activate_bundle(tiny_bundle, "engineer")
        sub = st.subscribe()
        st.trigger()
        assert sub.get(timeout=30).frames == 2  # still the gated bundle, still bursting
        refused = [a for a in st.store.audit_log() if a["event"] == "bundle_refused"]
    finally:
        st.stop()
    assert len(refused) == 1 and "no quality gate" in refused[0]["detail"]["reason"]


def test_bench_burst_compares_one_frame_with_a_burst_on_the_same_triggers(gated, tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    replay = tmp_path / "replay"
    replay.mkdir()
    for p in list_images(tiny_line / "test" / "good")[:4]:
        shutil.copy(p, replay / p.name)
    out = tmp_path / "burst.json"
    assert main(["bench", "burst", "--bundle", str(gated), "--replay", str(replay), "--workdir", str(tmp_path / "run"),
                 "--parts", "8", "--rate", "8", "--fps", "60", "--rounds", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    one, three = res["by_burst"]["1"], res["by_burst"]["3"]
    assert one["verdicts"] == three["verdicts"] == 8 and res["lost"] == 0 == res["doubled"]
    assert three["short_bursts"] == 0 and three["p50_ms"] > one["p50_ms"]  # two more camera frames to wait for
    assert res["p99_ratio"] == pytest.approx(three["p99_ms"] / one["p99_ms"], abs=0.01)
    assert "burst 3 ÷ single frame" in capsys.readouterr().out
