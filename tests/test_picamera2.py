"""The picamera2 source with a stand-in picamera2 module (the real one exists only on a Pi), and
the latest-frame state readers wait on."""
from __future__ import annotations

import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from device.station.camera import PiCamera
from device.station.capture import CameraState
from device.station.config import parse_config
from device.station.raw import RawStream
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config

MAIN, LORES = (320, 240), (160, 120)  # (width, height)
MAIN_RGB = (200, 100, 50)  # the full-size stream's colour: R, G and B told apart in the kept image
LORES_STRIDE = 192  # lores rows padded past the width, as libcamera aligns them
RAW = (64, 48)  # the raw stream's size (width, height)
RAW_STRIDE = 160  # bytes per raw row: 64 pixels x 2 bytes, padded
RAW_CELL = {"R": 100, "G": (200, 201), "B": 300}  # a dark 12-bit scene: ~5 % of 4095, where lores is mid-gray
SENSOR_MODES = [{"format": "SRGGB10_CSI2P", "unpacked": "SRGGB10", "bit_depth": 10, "size": RAW},
                {"format": "SRGGB12_CSI2P", "unpacked": "SRGGB12", "bit_depth": 12, "size": RAW}]


def raw_bytes(fmt: str) -> np.ndarray:
    """An unpacked Bayer frame as picamera2 hands it over: rows of bytes, two little-endian bytes a pixel."""
    w, h = RAW
    order = fmt[1:5]
    values = np.zeros((h, w), np.uint16)
    greens = iter(RAW_CELL["G"])
    for c, (dy, dx) in zip(order, ((0, 0), (0, 1), (1, 0), (1, 1))):
        values[dy::2, dx::2] = next(greens) if c == "G" else RAW_CELL[c]
    out = np.zeros((h, RAW_STRIDE), np.uint8)
    out[:, : w * 2] = values.astype("<u2").view(np.uint8).reshape(h, w * 2)
    return out


class FakeRequest:
    """One completed request: both streams of the same instant, until it is released."""

    def __init__(self, cam: "FakePicamera2") -> None:
        self.cam = cam

    def make_array(self, name: str) -> np.ndarray:
        w, h = self.cam.config[name]["size"]
        self.cam.arrays.append(name)
        if name == "raw":
            return raw_bytes(self.cam.camera_configuration()["raw"]["format"])
        if name == "main":
            assert self.cam.config["main"]["format"] == "XBGR8888"
            out = np.full((h, w, 4), 255, np.uint8)  # XBGR8888: R, G, B, X in memory
            out[..., :3] = MAIN_RGB
            return out
        return np.full((h * 3 // 2, LORES_STRIDE), 128, np.uint8)  # YUV420, a plain gray

    def release(self) -> None:
        self.cam.held -= 1


class FakePicamera2:
    """Just the calls the station makes; a frame every 10 ms. ``sensor_modes`` and ``raw_as`` (the raw
    format the camera sets up whatever is asked: a Pi 5 may compress it) stand for the sensor."""

    sensor_modes: list[dict] = SENSOR_MODES
    raw_as: str | None = None

    def __init__(self) -> None:
        self.config: dict = {}
        self.arrays: list[str] = []  # streams copied out, in order
        self.held = self.most_held = 0
        FakePicamera2.last = self

    def create_video_configuration(self, main: dict, lores: dict, controls: dict, raw: dict | None = None) -> dict:
        config = {"main": dict(main), "lores": dict(lores), "controls": dict(controls)}
        if raw is not None:
            config["raw"] = {"size": RAW, **raw}
        return config

    def configure(self, config: dict) -> None:
        self.config = config

    def camera_configuration(self) -> dict:
        raw = self.config.get("raw")
        return {**self.config, "raw": raw and {**raw, "format": self.raw_as or raw["format"], "stride": RAW_STRIDE}}

    def start(self) -> None:
        pass

    def capture_request(self) -> FakeRequest:
        time.sleep(0.01)
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        return FakeRequest(self)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture()
def fake_picamera2(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    return FakePicamera2


def test_rejects_keep_the_full_size_main_image_while_lores_is_judged(fake_picamera2, tiny_bundle, tiny_line, tmp_path,
                                                                      monkeypatch):
    import device.runtime as runtime

    judged: list[tuple[int, ...]] = []
    judge = runtime.Inspector.judge
    monkeypatch.setattr(runtime.Inspector, "judge", lambda self, frame, *a, **k: judged.append(frame.shape)
                        or judge(self, frame, *a, **k))
    cfg = station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), mode="software",
                         extra="decision: {threshold: 0.000001}")  # every part a reject: its images are kept
    st = Station(cfg, camera=PiCamera(MAIN, LORES, 0, 0.0, 30.0))
    st.start()
    try:
        sub = st.subscribe()
        recs = []
        for _ in range(3):
            st.trigger()
            recs.append(sub.get(timeout=20))
        live, _ = st.camera_state.latest()
    finally:
        st.stop()
    cam = fake_picamera2.last
    assert all(r.verdict == "defect" and r.frame_ref and r.heatmap_ref for r in recs)
    # the last three judgements are the parts' (the bundle's self-check judges its probes first)
    assert judged[-3:] == [(LORES[1], LORES[0], 3)] * 3 and live.shape == (LORES[1], LORES[0], 3)
    for r in recs:
        kept = cv2.imread(str(st.store.image_path(r.frame_ref)))
        heat = cv2.imread(str(st.store.image_path(r.heatmap_ref)))
        assert kept.shape == heat.shape == (MAIN[1], MAIN[0], 3)
        assert np.abs(kept.reshape(-1, 3).mean(0) - MAIN_RGB[::-1]).max() < 3  # BGR on disk: the right colours
    # main is copied out only for the three inspected frames; lores for every frame read
    assert cam.arrays.count("main") == 3 and cam.arrays.count("lores") > 3
    assert cam.most_held == 1 and cam.held == 0  # one request held at a time, none left after stop


def test_a_reader_waiting_for_the_next_frame_wakes_when_it_is_published():
    class CountingCondition(threading.Condition):
        waits = 0

        def wait(self, timeout=None):
            CountingCondition.waits += 1
            return super().wait(timeout)

    state = CameraState("test")
    state.cond = CountingCondition()
    got: list[tuple[int, float]] = []
    reader = threading.Thread(target=lambda: got.append((state.wait_newer(0, timeout=30), time.monotonic())))
    reader.start()
    deadline = time.monotonic() + 10
    while CountingCondition.waits == 0 and time.monotonic() < deadline:  # the reader is blocked in wait()
        time.sleep(0.001)
    assert not got and CountingCondition.waits == 1
    published = time.monotonic()
    state.publish(np.zeros((4, 4, 3), np.uint8), time.time())
    reader.join(timeout=5)
    assert got and got[0][0] == 1 and got[0][1] - published < 1.0  # woken by the publish, not a 30 s timeout
    assert CountingCondition.waits == 1  # one wait, ended by the notify: no polling loop
    assert state.wait_newer(1, timeout=0.01) == 1  # nothing newer: the same number back after the timeout
    frame, number = state.latest()
    assert number == 1 and frame.shape == (4, 4, 3)


class RecordingGate:
    """Stands in for the bundle's quality gate: quality = mean / full scale (by the frame's bits), floor
    0.2; keeps every frame it is given, with its bits."""

    floor = 0.2
    follows_verdicts = True

    def __init__(self) -> None:
        self.seen: list[tuple[np.ndarray, int | None]] = []

    def passes(self, quality: float) -> bool:
        return quality >= self.floor

    def retakes(self, quality: float, z: float) -> bool:  # floors only: no verdict guard
        return not self.passes(quality)

    def assess(self, frame: np.ndarray, bits: int | None = None) -> tuple[float, str]:
        self.seen.append((frame.copy(), bits))
        return float(frame.mean() / (2 ** (bits or frame.dtype.itemsize * 8) - 1)), "dark"


def picamera2_config(tmp_path, bundle, raw_for_gate: bool, extra: str = ""):
    return parse_config(f"""
station: {{name: pi, data_dir: {tmp_path / 'data'}}}
bundle: {{path: {bundle}, precision: int8, threads: 1}}
camera:
  type: picamera2
  picamera2: {{size: [{MAIN[0]}, {MAIN[1]}], lores: [{LORES[0]}, {LORES[1]}], raw_for_gate: {str(raw_for_gate).lower()}}}
trigger: {{mode: software}}
dashboard: {{enabled: false}}
{extra}""", "pi.yaml")


@pytest.mark.parametrize("raw_for_gate", [True, False], ids=["raw-stream", "lores"])
def test_the_gate_reads_the_12_bit_raw_stream_and_the_verdict_follows_it(fake_picamera2, tiny_bundle, tmp_path,
                                                                          monkeypatch, raw_for_gate):
    """The raw scene is dark (~5 % of 12 bits) where lores is mid-gray: only a gate reading the raw
    stream, scaled by 4095, retakes the part; the anomaly model judges lores either way."""
    import device.runtime as runtime

    gate = RecordingGate()
    monkeypatch.setattr(runtime, "load_rankers", lambda bundle: (gate, None))
    judged: list[tuple[int, ...]] = []
    judge = runtime.Inspector.judge
    monkeypatch.setattr(runtime.Inspector, "judge", lambda self, frame, *a, **k: judged.append(frame.shape)
                        or judge(self, frame, *a, **k))
    st = Station(picamera2_config(tmp_path, tiny_bundle, raw_for_gate))
    st.start()
    try:
        sub = st.subscribe()
        for _ in range(3):
            st.trigger()
        recs = [sub.get(timeout=20) for _ in range(3)]
    finally:
        st.stop()
    assert judged[-3:] == [(LORES[1], LORES[0], 3)] * 3  # the anomaly model reads lores in both cases
    frame, bits = gate.seen[-1]
    if raw_for_gate:
        assert frame.dtype == np.uint16 and bits == 12 and frame.shape == (RAW[1] // 2, RAW[0] // 2, 3)
        # each Bayer cell binned to one RGB pixel of the 12-bit content: R, the greens' mean, B
        assert [int(v) for v in np.unique(frame.reshape(-1, 3), axis=0)[0]] == [100, 201, 300]
        expected = (100 + 201 + 300) / 3 / 4095  # by the sensor's 12 bits: 0.049 (0.003 by 65535)
        assert all(r.verdict == "retake" and r.quality == pytest.approx(expected, rel=1e-6) for r in recs)
        assert all(r.retake_reason == "dark" for r in recs)
    else:
        assert frame.dtype == np.uint8 and bits is None and frame.shape == (LORES[1], LORES[0], 3)
        assert all(r.verdict != "retake" and r.quality == pytest.approx(128 / 255, abs=0.01) for r in recs)
    assert fake_picamera2.last.held == 0


@pytest.mark.parametrize("modes, raw_as, message", [
    ([], None, r"camera\.picamera2\.raw_for_gate = true: this camera lists no sensor modes, so it has no raw stream"),
    (SENSOR_MODES, "BGGR_PISP_COMP1", r"camera\.picamera2\.raw_for_gate = true: the sensor's raw stream comes as "
                                      r"'BGGR_PISP_COMP1', not an unpacked Bayer format"),
], ids=["no-raw-stream", "compressed"])
def test_a_sensor_without_a_readable_raw_stream_is_one_sentence(fake_picamera2, tiny_bundle, tmp_path, monkeypatch,
                                                                 modes, raw_as, message):
    monkeypatch.setattr(fake_picamera2, "sensor_modes", modes)
    monkeypatch.setattr(fake_picamera2, "raw_as", raw_as)
    st = Station(picamera2_config(tmp_path, tiny_bundle, True))
    with pytest.raises(KenpinError, match=message) as e:
        st.start()
    assert "\n" not in str(e.value)


def test_raw_for_gate_needs_a_picamera2_camera_and_a_bundle_with_a_gate(fake_picamera2, tiny_bundle, tmp_path):
    with pytest.raises(KenpinError, match=r"pi\.yaml, line \d+: camera\.picamera2\.raw_for_gate = True: only a "
                                          r"picamera2 camera has a sensor raw stream and camera\.type is replay"):
        parse_config("camera:\n  type: replay\n  picamera2:\n    raw_for_gate: true\n", "pi.yaml")
    st = Station(picamera2_config(tmp_path, tiny_bundle, True))  # the tiny bundle has no quality gate
    with pytest.raises(KenpinError, match=r"this bundle has no quality gate, and camera\.picamera2\.raw_for_gate = "
                                          r"true \(only a quality gate reads the raw stream\)"):
        st.start()


@pytest.mark.parametrize("fmt, order, bits", [("SRGGB12", "RGGB", 12), ("SGBRG10", "GBRG", 10),
                                              ("SBGGR16", "BGGR", 16), ("SRGGB12_CSI2P", None, None),
                                              ("BGGR_PISP_COMP1", None, None), ("YUV420", None, None)])
def test_only_unpacked_bayer_streams_are_read_each_in_its_colour_order(fmt, order, bits):
    stream = RawStream.parse(fmt, RAW)
    if order is None:  # packed, compressed, not Bayer: refused at open (above)
        assert stream is None
        return
    assert (stream.order, stream.bits) == (order, bits)
    rgb = stream.binned_rgb(raw_bytes(fmt))
    assert rgb.dtype == np.uint16 and rgb.shape == (RAW[1] // 2, RAW[0] // 2, 3)
    assert rgb.reshape(-1, 3).min(0).tolist() == rgb.reshape(-1, 3).max(0).tolist() == [100, 201, 300]


def test_a_12_bit_frame_reaches_the_gate_scaled_by_4095_not_65535():
    """A deeper sensor's frame in uint16 with its bits reads as the same light as its float rendering."""
    from device.ranker_input import RankerInput

    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (96, 96, 3), dtype=np.uint16)
    prepare = RankerInput(size=32, crops=2, stats=True)
    as_float = prepare(twelve.astype(np.float32) / 4095)
    # the same up to the integer gray conversion's rounding (a fraction of one 12-bit level)
    assert np.abs(prepare(twelve, bits=12) - as_float)[0, :3].max() < 1 / 4095
    assert np.abs(prepare(twelve) - as_float)[0, :3].max() > 0.1  # read as 16-bit: 1/16 of the light
    with pytest.raises(KenpinError, match=r"bits = 17: a uint16 frame uses 1 to 16 bits"):
        prepare(twelve, bits=17)
