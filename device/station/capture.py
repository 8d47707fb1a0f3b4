"""The capture stage: reads the camera, keeps the newest frame for the live view, hands frames on.

Capture also preprocesses (:meth:`Model.prepare`), so that preprocessing overlaps the model's run
of the previous frame, and runs the quality gate (a burst's best frame, :mod:`device.station.burst`);
free-run skips under load and counts it, and skips the frames the gate would retake; triggered modes
never skip a trigger.
Each part goes on with the product binding its trigger got when queued (free-run: the one active
at capture), so a product switch never reaches a part already announced.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from device.station.burst import Shooter
from device.station.camera import Backoff, Camera, CameraLost
from device.station.counters import Counters
from device.station.model import Job
from device.station.triggers import FreeRun, Trigger, TriggerQueue

if TYPE_CHECKING:
    from device.station.products import Binding

log = logging.getLogger("kenpin.station")


class CameraState:
    """The newest frame and the camera's health, shared with the live view and the watchdog.

    Frames are numbered as they are published (1, 2, …); a reader that wants the next one waits on
    ``cond`` (:meth:`wait_newer`), which every publish notifies.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.cond = threading.Condition()
        self.frame: np.ndarray | None = None
        self.frame_number = 0  # of ``frame``; 0 before the first
        self.frame_time = 0.0
        self.last_frame_mono = 0.0
        self.connected = False
        self.reconnects = 0
        self.finished = False  # a non-looping replay reached its end
        self._fps_window: collections.deque[float] = collections.deque(maxlen=60)

    def publish(self, frame: np.ndarray, when: float) -> None:
        with self.cond:
            self.frame, self.frame_time = frame, when
            self.frame_number += 1
            self.last_frame_mono = time.monotonic()
            self._fps_window.append(self.last_frame_mono)
            self.cond.notify_all()

    def latest(self) -> tuple[np.ndarray | None, int]:
        """The newest frame (None before the first) and its number."""
        with self.cond:
            return self.frame, self.frame_number

    def wait_newer(self, seen: int, timeout: float | None = None) -> int:
        """Wait until a frame newer than number ``seen`` is published, at most ``timeout`` seconds;
        the newest frame's number (``seen`` itself when none came in time)."""
        with self.cond:
            self.cond.wait_for(lambda: self.frame_number > seen, timeout)
            return self.frame_number

    @property
    def fps(self) -> float:
        with self.cond:
            w = self._fps_window
            return (len(w) - 1) / (w[-1] - w[0]) if len(w) > 1 and w[-1] > w[0] else 0.0


class CaptureWorker(threading.Thread):
    """Reads the camera, reconnects with back-off, and feeds the frames to inspect to inference.

    ``slots`` counts the room in the inference queue (released by inference as it takes a job):
    a live camera that finds no room skips the frame (counted); a paced source (replay at fps 0)
    waits for room before it reads, so its frames' capture time is when they really enter. A
    part's burst (``burst`` frames a trigger, :mod:`device.station.burst`) is read under the one
    slot its first frame took, so a paced source never waits for room in the middle of one.
    """

    def __init__(self, camera: Camera, state: CameraState, inq: "queue.Queue[Job | None]", slots: threading.Semaphore,
                 triggers: TriggerQueue, freerun: FreeRun | None, counters: Counters, backoff: Backoff,
                 stop: threading.Event, bind: Callable[[], "Binding"], burst: int = 1) -> None:
        """``bind()``: the active product's binding, for free-run frames and triggers queued unbound;
        ``burst``: camera frames taken per trigger (the quality gate's best is judged)."""
        super().__init__(name="capture", daemon=True)
        self.bind, self.burst = bind, burst
        self.camera, self.state, self.inq, self.slots, self.triggers = camera, state, inq, slots, triggers
        self.freerun, self.counters, self.backoff, self.stop_event = freerun, counters, backoff, stop
        self._slot = False  # a slot acquired before reading a paced frame
        self._seq = 0  # capture order of the frames handed to inference
        self.shooter = Shooter(camera, state.publish)

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.state.connected and not self._reconnect():
                continue
            if not self._ready():
                continue
            try:
                self._dispatch(self.camera.read(), time.time(), time.perf_counter())
            except CameraLost as e:  # on reading, or in the middle of a burst (its part is on its way)
                self._release()
                self._lost(str(e))
                continue
            except EOFError:
                self._release()
                log.info("camera %s: replay finished", self.state.description)
                self.state.finished = True
                return
        self._release()

    def _ready(self) -> bool:
        """Live sources always read; a paced one reads when a frame is wanted and there is room."""
        if not self.camera.paced:
            return True
        if self.freerun is None and not self.triggers.wait(0.05):
            return False
        self._slot = self.slots.acquire(timeout=0.1)
        return self._slot

    def _release(self) -> None:
        if self._slot:
            self._slot = False
            self.slots.release()

    def _dispatch(self, frame: np.ndarray, now: float, t0: float) -> None:
        self.state.publish(frame, now)
        due = self.freerun is not None and self.freerun.due(now)
        if not due and not len(self.triggers):
            self._release()
            return
        if not (self._slot or self.slots.acquire(blocking=False)):
            if due:
                self.counters.add("skipped_frames")
            return  # pending triggers wait for room: they are never dropped
        self._slot = False
        trigger = self.triggers.pop()
        binding = trigger.bound if trigger is not None and trigger.bound is not None else self.bind()
        job = self._job(frame, now, t0, trigger, binding)
        if job is not None:
            job.seq, self._seq = self._seq, self._seq + 1
            self.inq.put_nowait(job)  # unbounded Queue; its bound is ``slots``
        lost, self.shooter.interrupted = self.shooter.interrupted, None
        if lost is not None:  # the camera went in the middle of a burst: handled as on any read
            raise lost

    def _job(self, frame: np.ndarray, now: float, t0: float, trigger: Trigger | None, binding: "Binding") -> Job | None:
        """The part's job, prepared for inference; None when the frame goes no further (its slot given
        back): a free-run frame the quality gate would retake (counted, no verdict, no pulse), or a
        failure of the gate or of preprocessing (counted as a trigger error and logged; the line goes on)."""
        source, tid = (trigger.source, trigger.id) if trigger is not None else ("free-run", None)
        gate = binding.model.gate
        try:
            shot = self.shooter.take(frame, now, gate, self.burst if trigger is not None else 1)
        except Exception:  # e.g. a frame the gate cannot read: as a preprocessing failure below
            return self._failed(source, tid, "the quality gate", counted=False)
        if trigger is None and shot.assessed is not None and not gate.passes(shot.assessed[0]):
            self.slots.release()  # free-run: a frame the gate would retake is skipped, the next one judged
            self.counters.add("gate_skipped_frames")
            return None
        self.counters.add("triggers")
        if trigger is not None:
            self.counters.add("burst_frames", shot.frames)
        # latency counts from the part's first frame, so a burst's cost is in it; the record's time is the chosen frame's
        job = Job(shot.frame, shot.captured, t0, source, tid, full=shot.full, frames=shot.frames, assessed=shot.assessed)
        job.model, job.product = binding.model, binding.product
        try:
            job.model.prepare(job)  # here, so that preprocessing overlaps the model's run
        except Exception:  # e.g. a frame OpenCV cannot resize: counted, logged, the line goes on
            return self._failed(source, tid, "preprocessing", counted=True)
        return job

    def _failed(self, source: str, trigger_id: int | None, stage: str, counted: bool) -> None:
        """A part that cannot go on: its slot back, counted as a trigger (unless it already is) and a trigger error."""
        self.slots.release()
        if not counted:
            self.counters.add("triggers")
        self.counters.add("trigger_errors")
        log.exception("%s failed for trigger %s (%s)", stage, trigger_id, source)

    def _reconnect(self) -> bool:
        try:
            self.camera.open()
        except CameraLost as e:
            delay = self.backoff.next()
            log.warning("camera %s: %s; retrying in %.1f s", self.state.description, e, delay)
            self.stop_event.wait(delay)
            return False
        self.state.connected = True
        self.backoff.reset()
        log.info("camera %s: connected", self.state.description)
        return True

    def _lost(self, why: str) -> None:
        self.state.connected = False
        self.state.reconnects += 1
        log.warning("camera %s lost (%s); reconnect #%d", self.state.description, why, self.state.reconnects)
        try:
            self.camera.close()
        except Exception:  # a dead device may fail to close; we reopen it anyway
            log.debug("camera close failed", exc_info=True)
        self.stop_event.wait(self.backoff.next())
