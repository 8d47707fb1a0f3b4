"""The workers of the station: capture → embed → score → record, joined by bounded queues.

Capture reads frames, keeps the newest for the live view and hands the frames to inspect to
inference (free-run skips under load and counts it; triggered modes never skip a trigger).
Capture also preprocesses; the model runs in its own stage and the reference search and decision
in the next, so on a multi-core Pi they overlap (a bundle swap takes effect between two parts).
With ``pipeline.workers`` > 1, N inspect workers each take a whole frame (model, then search)
instead, and :class:`InOrder` hands their decisions to the recorder in capture order: small
models scale poorly across ONNX Runtime's threads, frames side by side scale well.
The recorder makes the verdict durable, then fires the actuator, logs the verdict line and tells
subscribers — in that order, so nothing is acknowledged before it is recorded.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from device.bundle import Bundle
from device.errors import KenpinError
from device.runtime import Inspector
from device.selfcheck import SelfCheck
from device.station.camera import Backoff, Camera, CameraLost
from device.station.record import VerdictRecord
from device.station.triggers import FreeRun, TriggerQueue

log = logging.getLogger("kenpin.station")


@dataclass
class Job:
    """A frame to inspect and what asked for it."""

    frame: np.ndarray
    captured: float  # unix seconds
    t0: float  # perf_counter at capture (latency origin)
    source: str
    trigger_id: int | None
    model: "Model | None" = None  # the model current when the frame was taken (a swap applies to the next)
    tensor: np.ndarray | None = None  # preprocessed (capture stage)
    patches: np.ndarray | None = None  # embedded (embed stage)
    seq: int = -1  # capture order, for the in-order hand-off of parallel workers


@dataclass
class Decision:
    """Inference's output, waiting to be recorded."""

    job: Job
    record: VerdictRecord
    heatmap: np.ndarray | None


class Model:
    """One loaded bundle, proven on this CPU: the variant its self-check chose, with the bundle's
    quality gate and grade where it has them. Judging is :meth:`Inspector.judge`; the stages below
    only split the model's run off so that it overlaps the previous frame's search."""

    def __init__(self, bundle: Bundle, check: SelfCheck, threads: int) -> None:
        self.bundle = bundle
        self.check = check
        self.inspector = Inspector(bundle, check.variant, threads, rankers=True)

    @property
    def precision(self) -> str:
        """The variant that runs (``int8-w8``, ``int8-w7``, ``fp32``; ``int8`` in older bundles)."""
        return self.check.chosen

    def summary(self) -> dict[str, Any]:
        """The manifest facts an operator asks about, and what the self-check found on this CPU."""
        m = self.bundle.manifest
        v = m["variants"][self.precision]
        return {"id": self.bundle.bundle_id, "path": str(self.bundle.root), "created": m.get("created_utc"),
                "dataset": m.get("dataset") or m.get("recipe", {}).get("dataset"), "precision": self.precision,
                "verified_on_this_cpu": self.check.verified, "self_check": self.check.summary(),
                "self_check_seconds": round(self.check.seconds, 2),
                "input": [self.bundle.preprocess.width, self.bundle.preprocess.height],
                "quality_gate": self.inspector.gate is not None, "grade": self.inspector.grader is not None,
                "figures": {"calibration": v.get("calibration"), "evaluation": v.get("evaluation")}}

    def prepare(self, job: Job) -> None:
        """Capture stage: the model's input tensor."""
        job.tensor = self.inspector.preprocess(job.frame)

    def embed(self, job: Job) -> None:
        """Embed stage: ONNX Runtime only, so the model runs back to back."""
        job.patches = self.inspector.run(job.tensor)
        job.tensor = None

    def decide(self, job: Job, threshold: float, station: str) -> Decision:
        """Score stage: the judgement of the embedded frame (embedded here when not pipelined) against ``threshold``."""
        v = self.inspector.judge(job.frame, job.patches, threshold, t0=job.t0)
        rec = VerdictRecord(job.captured, station, self.bundle.bundle_id, v.verdict, v.score, threshold, v.raw_score,
                            v.raw_threshold, v.quality, v.latency_ms, job.source, job.trigger_id, grade=v.grade,
                            retake_reason=v.retake_reason)
        return Decision(job, rec, v.heatmap)


class Counters:
    """PLC-style counters and the processing-time window, shared by the workers."""

    def __init__(self, window: int = 4096) -> None:
        self.lock = threading.Lock()
        self.triggers = self.ok = self.defect = self.retake = 0
        self.trigger_errors = self.skipped_frames = self.frames = 0
        self._lat: collections.deque[float] = collections.deque(maxlen=window)
        self._min, self._max, self._sum, self._n = math.inf, 0.0, 0.0, 0

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def verdict(self, rec: VerdictRecord) -> None:
        with self.lock:
            setattr(self, rec.verdict, getattr(self, rec.verdict) + 1)
            self._lat.append(rec.latency_ms)
            self._min, self._max = min(self._min, rec.latency_ms), max(self._max, rec.latency_ms)
            self._sum += rec.latency_ms
            self._n += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, float | None]]:
        """(counters, processing_ms) — processing percentiles over the last ``window`` parts."""
        with self.lock:
            counts = {k: getattr(self, k) for k in ("triggers", "ok", "defect", "retake", "trigger_errors", "skipped_frames")}
            lat = np.asarray(self._lat, dtype=np.float64)
            if self._n:
                p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
                ms = {"min": self._min, "avg": self._sum / self._n, "max": self._max, "p50": p50, "p99": p99}
            else:
                ms = {k: None for k in ("min", "avg", "max", "p50", "p99")}
        return counts, {k: (round(v, 2) if v is not None else None) for k, v in ms.items()}


class CameraState:
    """The newest frame and the camera's health, shared with the live view and the watchdog."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.cond = threading.Condition()
        self.frame: np.ndarray | None = None
        self.frame_time = 0.0
        self.last_frame_mono = 0.0
        self.connected = False
        self.reconnects = 0
        self.finished = False  # a non-looping replay reached its end
        self._fps_window: collections.deque[float] = collections.deque(maxlen=60)

    def publish(self, frame: np.ndarray, when: float) -> None:
        with self.cond:
            self.frame, self.frame_time = frame, when
            self.last_frame_mono = time.monotonic()
            self._fps_window.append(self.last_frame_mono)
            self.cond.notify_all()

    @property
    def fps(self) -> float:
        with self.cond:
            w = self._fps_window
            return (len(w) - 1) / (w[-1] - w[0]) if len(w) > 1 and w[-1] > w[0] else 0.0


class CaptureWorker(threading.Thread):
    """Reads the camera, reconnects with back-off, and feeds the frames to inspect to inference.

    ``slots`` counts the room in the inference queue (released by inference as it takes a job):
    a live camera that finds no room skips the frame (counted); a paced source (replay at fps 0)
    waits for room before it reads, so its frames' capture time is when they really enter.
    """

    def __init__(self, camera: Camera, state: CameraState, inq: "queue.Queue[Job | None]", slots: threading.Semaphore,
                 triggers: TriggerQueue, freerun: FreeRun | None, counters: Counters, backoff: Backoff,
                 stop: threading.Event, model: Callable[[], "Model"]) -> None:
        super().__init__(name="capture", daemon=True)
        self.model = model
        self.camera, self.state, self.inq, self.slots, self.triggers = camera, state, inq, slots, triggers
        self.freerun, self.counters, self.backoff, self.stop_event = freerun, counters, backoff, stop
        self._slot = False  # a slot acquired before reading a paced frame
        self._seq = 0  # capture order of the frames handed to inference

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.state.connected and not self._reconnect():
                continue
            if not self._ready():
                continue
            try:
                frame = self.camera.read()
            except CameraLost as e:
                self._release()
                self._lost(str(e))
                continue
            except EOFError:
                self._release()
                log.info("camera %s: replay finished", self.state.description)
                self.state.finished = True
                return
            self._dispatch(frame, time.time(), time.perf_counter())
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
        if trigger is not None:
            job = Job(frame, now, t0, trigger.source, trigger.id)
        else:
            job = Job(frame, now, t0, "free-run", None)
        self.counters.add("triggers")
        job.model = self.model()
        try:
            job.model.prepare(job)  # here, so that preprocessing overlaps the model's run
        except Exception:  # e.g. a frame OpenCV cannot resize: counted, logged, the line goes on
            self.slots.release()
            self.counters.add("trigger_errors")
            log.exception("preprocessing failed for trigger %s (%s)", job.trigger_id, job.source)
            return
        job.seq, self._seq = self._seq, self._seq + 1
        self.inq.put_nowait(job)  # unbounded Queue; its bound is ``slots``

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


class EmbedWorker(threading.Thread):
    """Runs the model on queued frames, back to back, until it reads the end marker (None)."""

    def __init__(self, inq: "queue.Queue[Job | None]", slots: threading.Semaphore, midq: "queue.Queue[Job | None]",
                 counters: Counters) -> None:
        super().__init__(name="embed", daemon=True)
        self.inq, self.slots, self.midq, self.counters = inq, slots, midq, counters

    def run(self) -> None:
        while (job := self.inq.get()) is not None:
            self.slots.release()  # room for the next frame while this one is embedded
            try:
                job.model.embed(job)
            except Exception:  # one bad frame must not stop the line; it is counted and logged
                self.counters.add("trigger_errors")
                log.exception("model failed for trigger %s (%s)", job.trigger_id, job.source)
                continue
            self.midq.put(job)
        self.midq.put(None)


class ScoreWorker(threading.Thread):
    """Scores embedded frames (reference search, threshold, heat map) into decisions."""

    def __init__(self, midq: "queue.Queue[Job | None]", outq: "queue.Queue[Decision | None]",
                 threshold: Callable[[], float], station: str, counters: Counters) -> None:
        super().__init__(name="score", daemon=True)
        self.midq, self.outq, self.threshold, self.station, self.counters = midq, outq, threshold, station, counters

    def run(self) -> None:
        while (job := self.midq.get()) is not None:
            try:
                decision = job.model.decide(job, self.threshold(), self.station)
            except Exception:  # as above: counted and logged
                self.counters.add("trigger_errors")
                log.exception("scoring failed for trigger %s (%s)", job.trigger_id, job.source)
                continue
            self.outq.put(decision)
        self.outq.put(None)


class InOrder:
    """Passes parallel workers' decisions to the recorder in capture order.

    A worker that fails on a frame reports ``None`` for its number so the frames behind it are
    not held back; the last worker to finish sends the recorder its end marker.
    """

    def __init__(self, outq: "queue.Queue[Decision | None]", producers: int) -> None:
        self._outq, self._left = outq, producers
        self._lock = threading.Lock()
        self._pending: dict[int, Decision | None] = {}
        self._next = 0

    def done(self, seq: int, decision: Decision | None) -> None:
        """Worker side: frame ``seq`` is decided (or failed: None)."""
        with self._lock:  # held while putting: a full record queue back-pressures every worker alike
            self._pending[seq] = decision
            while self._next in self._pending:
                d = self._pending.pop(self._next)
                self._next += 1
                if d is not None:
                    self._outq.put(d)

    def finished(self) -> None:
        """Worker side: this worker read its end marker."""
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._outq.put(None)


class InspectWorker(threading.Thread):
    """One of N parallel workers: model and decision for a whole frame, then the in-order hand-off."""

    def __init__(self, index: int, inq: "queue.Queue[Job | None]", slots: threading.Semaphore, order: InOrder,
                 threshold: Callable[[], float], station: str, counters: Counters) -> None:
        super().__init__(name=f"inspect-{index}", daemon=True)
        self.inq, self.slots, self.order, self.threshold = inq, slots, order, threshold
        self.station, self.counters = station, counters

    def run(self) -> None:
        while (job := self.inq.get()) is not None:
            self.slots.release()
            decision = None
            try:
                job.model.embed(job)
                decision = job.model.decide(job, self.threshold(), self.station)
            except Exception:  # one bad frame must not stop the line; it is counted and logged
                self.counters.add("trigger_errors")
                log.exception("inspection failed for trigger %s (%s)", job.trigger_id, job.source)
            self.order.done(job.seq, decision)
        self.order.finished()


class RecorderWorker(threading.Thread):
    """Records decisions durably, then acts on each: actuator, verdict log line, subscribers.

    Decisions already waiting when one arrives are recorded with it in one transaction (group
    commit, up to ``batch``): on a slow SD card the sync per commit, not the work, limits the rate,
    and a line that momentarily outpaces the disk catches up instead of queueing further.
    """

    def __init__(self, outq: "queue.Queue[Decision | None]", store: Any, actuator: Any, counters: Counters,
                 on_recorded: Callable[[VerdictRecord], None], batch: int = 16) -> None:
        super().__init__(name="recorder", daemon=True)
        self.outq, self.store, self.actuator, self.counters, self.on_recorded = outq, store, actuator, counters, on_recorded
        self.batch = batch

    def run(self) -> None:
        while (first := self.outq.get()) is not None:
            batch, end = [first], False
            while len(batch) < self.batch:
                try:
                    d = self.outq.get_nowait()
                except queue.Empty:
                    break
                if d is None:
                    end = True
                    break
                batch.append(d)
            self._record(batch)
            if end:
                return

    def _record(self, batch: list[Decision]) -> None:
        try:
            recs = self.store.record_many([(d.record, d.job.frame, d.heatmap) for d in batch])
        except KenpinError as e:  # the store degrades rather than raising; belt and braces
            log.error("recording failed: %s", e)
            recs = [d.record for d in batch]
        for rec in recs:
            self.actuator.fire(rec.verdict)
            self.counters.verdict(rec)
            log.info("verdict id=%s trigger=%s source=%s verdict=%s%s score=%.3f quality=%s grade=%s latency_ms=%.1f",
                     rec.id, rec.trigger_id, rec.trigger_source, rec.verdict,
                     f" ({rec.retake_reason})" if rec.retake_reason else "", rec.score,
                     "-" if rec.quality is None else f"{rec.quality:.3f}",
                     "-" if rec.grade is None else f"{rec.grade:.2f}", rec.latency_ms)
            self.on_recorded(rec)
