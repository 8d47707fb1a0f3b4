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

from device.station.camera import PiCamera
from device.station.capture import CameraState
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config

MAIN, LORES = (320, 240), (160, 120)  # (width, height)
MAIN_RGB = (200, 100, 50)  # the full-size stream's colour: R, G and B told apart in the kept image
LORES_STRIDE = 192  # lores rows padded past the width, as libcamera aligns them


class FakeRequest:
    """One completed request: both streams of the same instant, until it is released."""

    def __init__(self, cam: "FakePicamera2") -> None:
        self.cam = cam

    def make_array(self, name: str) -> np.ndarray:
        w, h = self.cam.config[name]["size"]
        self.cam.arrays.append(name)
        if name == "main":
            assert self.cam.config["main"]["format"] == "XBGR8888"
            out = np.full((h, w, 4), 255, np.uint8)  # XBGR8888: R, G, B, X in memory
            out[..., :3] = MAIN_RGB
            return out
        return np.full((h * 3 // 2, LORES_STRIDE), 128, np.uint8)  # YUV420, a plain gray

    def release(self) -> None:
        self.cam.held -= 1


class FakePicamera2:
    """Just the calls the station makes; a frame every 10 ms."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.arrays: list[str] = []  # streams copied out, in order
        self.held = self.most_held = 0
        FakePicamera2.last = self

    def create_video_configuration(self, main: dict, lores: dict, controls: dict) -> dict:
        return {"main": dict(main), "lores": dict(lores), "controls": dict(controls)}

    def configure(self, config: dict) -> None:
        self.config = config

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
