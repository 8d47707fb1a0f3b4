"""The Station: one object that starts the workers and answers the dashboard, metrics and MQTT.

Start-up opens things in order (store, camera, model, actuator, recorder, score, embed, capture,
triggers) and ``stop`` closes them in reverse, so the parts in flight are finished and recorded
before the store closes.
"""
from __future__ import annotations

import csv
import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import cv2
from threadpoolctl import threadpool_limits

from device.bundle import load_bundle
from device.selfcheck import self_check
from device.errors import KenpinError
from device.station.actuator import make_actuator
from device.station.camera import Backoff, Camera, CameraLost, make_camera
from device.station.config import StationConfig
from device.station.overrides import OverrideFile, Overrides
from device.station.capture import CameraState, CaptureWorker
from device.station.counters import Counters
from device.station.model import Decision, Job, Model
from device.station.pipeline import EmbedWorker, InOrder, InspectWorker, RecorderWorker, ScoreWorker
from device.station.record import VerdictRecord
from device.station.store import VerdictStore
from device.station.triggers import TRIGGER_INPUTS, FreeRun, TriggerQueue
from device.version import kenpin_version

log = logging.getLogger("kenpin.station")

FEEDBACK_LABELS = {"good": "good", "defect": "defect"}


class Subscription:
    """A subscriber's own bounded queue of recorded verdicts; a slow reader loses events, counted."""

    def __init__(self, maxsize: int) -> None:
        self._q: queue.Queue[VerdictRecord] = queue.Queue(maxsize)
        self.dropped = 0

    def offer(self, rec: VerdictRecord) -> None:
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            self.dropped += 1

    def get(self, timeout: float | None = None) -> VerdictRecord:
        """The next verdict in recording order; raises queue.Empty after ``timeout`` seconds."""
        return self._q.get(timeout=timeout)


class Station:
    """The station daemon's core: camera → verdict → reject signal → record."""

    def __init__(self, config: StationConfig, camera: Camera | None = None, pin_factory: Any = None) -> None:
        self.config = config
        self.name = config.station.name
        self.started_at = time.time()
        self.store = VerdictStore(config.station.data_dir, config.record.image_budget_mb,
                                  config.record.ok_image_fraction, config.record.seed, config.record.reserve_mb)
        self._camera = camera if camera is not None else make_camera(config.camera.type, config.camera.settings)
        self._pin_factory = pin_factory
        self._lock = threading.Lock()
        self._overrides = OverrideFile(config.station.data_dir)
        self._restored = self._overrides.load(config.bundle.path, config.decision.threshold)
        self._threshold = self._restored.threshold if self._restored else config.decision.threshold
        self._threshold_history: list[float] = []
        self._model: Model | None = None
        self._previous_model: Model | None = None
        self.counters = Counters()
        self.camera_state = CameraState(self._camera.description)
        self.triggers = TriggerQueue(config.trigger.max_backlog)
        self._subs: list[Subscription] = []
        self._last: VerdictRecord | None = None
        self._jpeg: tuple[float, bytes] | None = None
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._inq: queue.Queue[Job | None] = queue.Queue()  # bounded by _slots (room for the end marker)
        self._slots = threading.Semaphore(config.pipeline.inference_queue)
        self._midq: queue.Queue[Job | None] = queue.Queue(1)
        self._outq: queue.Queue[Decision | None] = queue.Queue(config.pipeline.record_queue)
        self._actuator: Any = None
        self._trigger_input: Any = None  # an outside input queueing triggers (GPIO), when configured
        self._blas_limit: Any = None  # threadpoolctl's limiter while parallel workers run
        self.running = False

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Open the camera and the model, then start recorder, inference workers and capture, in that order."""
        try:
            self._camera.open()
        except CameraLost as e:
            self.store.close()
            raise KenpinError(f"{e}; check the cable/URL and camera.* in the station config") from None
        except KenpinError:
            self.store.close()
            raise
        self.camera_state.connected = True
        try:
            self._model = self._load_start_model()
        except KenpinError:
            self._camera.close()
            self.store.close()
            raise
        self._actuator = make_actuator(self.config.actuator, self._pin_factory)
        self.store.audit("start", {"bundle": self._model.bundle.bundle_id, "precision": self._model.precision,
                                   "threshold": self._threshold, "restored_from_dashboard": self._restored is not None,
                                   "config": self.config.summary()})
        c, freerun = self.config, None
        if c.trigger.mode == "free-run":
            freerun = FreeRun(c.trigger.every_n, c.trigger.rate_hz)
        self._workers = [RecorderWorker(self._outq, self.store, self._actuator, self.counters, self._recorded),
                         *self._inference_workers(),
                         CaptureWorker(self._camera, self.camera_state, self._inq, self._slots, self.triggers, freerun,
                                       self.counters, Backoff(c.camera.reconnect_initial_s, c.camera.reconnect_max_s),
                                       self._stop, self._current_model)]
        for w in self._workers:
            w.start()
        if c.trigger.mode in TRIGGER_INPUTS:
            self._trigger_input = TRIGGER_INPUTS[c.trigger.mode](c.trigger, self.triggers, self._pin_factory)
        self.running = True
        log.info("station %s running: bundle %s (%s), camera %s, trigger %s", self.name, self._model.bundle.bundle_id,
                 self._model.precision, self._camera.description, c.trigger.mode)

    def _inference_workers(self) -> list[threading.Thread]:
        """Embed and score stages (one worker), or N whole-frame workers handing over in order."""
        n, threshold = self.config.pipeline.workers, lambda: self._threshold
        if n == 1:
            return [ScoreWorker(self._midq, self._outq, threshold, self.name, self.counters),
                    EmbedWorker(self._inq, self._slots, self._midq, self.counters)]
        # N searches side by side: one BLAS thread each, or they oversubscribe the cores
        # (measured on 2 cores, 2 workers: 193 frames/s with 1 BLAS thread, 125 with 2).
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        order = InOrder(self._outq, n)
        return [InspectWorker(i, self._inq, self._slots, order, threshold, self.name, self.counters) for i in range(n)]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop in reverse order: no new triggers or frames, finish the parts in flight, flush, close."""
        if not self.running:
            return
        self.running = False
        if self._trigger_input is not None:
            self._trigger_input.close()
        self._stop.set()
        recorder, *inference, capture = self._workers
        capture.join(timeout)
        for _ in range(self.config.pipeline.workers):
            self._inq.put(None)  # after the queued frames: they are finished, not dropped
        for w in (*reversed(inference), recorder):  # each passes the end marker on when done
            w.join(timeout)
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
        if len(self.triggers):
            log.warning("stopping with %d triggers not yet answered", len(self.triggers))
        self._camera.close()
        self._actuator.close()
        self.store.audit("stop", {"counters": self.counters.snapshot()[0]})
        self.store.close()
        log.info("station %s stopped", self.name)

    def wait_replay_done(self, timeout: float) -> bool:
        """For a non-looping replay: True once every frame has been captured and recorded."""
        deadline = time.monotonic() + timeout
        while True:  # checked at least once: timeout 0 is a poll
            c = self.counters.snapshot()[0]
            if self.camera_state.finished and c["ok"] + c["defect"] + c["retake"] + c["trigger_errors"] >= c["triggers"]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def frames_flowing(self) -> bool:
        """True while the camera delivered a frame recently (what the systemd watchdog is fed on)."""
        age = time.monotonic() - self.camera_state.last_frame_mono
        paced_idle = self._camera.paced and self.config.trigger.mode != "free-run"
        return self.running and self.camera_state.connected and (paced_idle or age < self.config.pipeline.watchdog_stall_s)

    # -- model and bundle swap ------------------------------------------------------------
    def _load_model(self, path: Path) -> Model:
        """Verify the bundle, prove it on this CPU (the self-check chooses the variant), load it."""
        bundle = load_bundle(path)
        check = self_check(bundle, self.config.bundle.threads, self.config.bundle.precision)
        self.store.audit("self_check", {"bundle": bundle.bundle_id, **check.to_dict()})
        return Model(bundle, check, self.config.bundle.threads)

    def _load_start_model(self) -> Model:
        """The bundle last activated from the dashboard if it still loads, else the config's."""
        ov = self._restored
        if ov is not None and ov.bundle != str(self.config.bundle.path):
            try:
                return self._load_model(Path(ov.bundle))
            except KenpinError as e:
                log.warning("the bundle last activated from the dashboard does not load (%s); starting with "
                            "bundle.path from the config", e)
                self.store.audit("restore_refused", {"bundle": ov.bundle, "reason": str(e)})
        return self._load_model(self.config.bundle.path)

    def _keep_overrides(self) -> None:
        """Write the threshold and active bundle so that a restart or power cut keeps them."""
        with self._lock:
            ov = Overrides(str(self.config.bundle.path), self.config.decision.threshold,
                           str(self._model.bundle.root) if self._model else str(self.config.bundle.path),
                           self._threshold)
        try:
            self._overrides.save(ov)
        except OSError as e:  # verdicts keep flowing; the change holds until the next restart
            log.error("the change is in effect but will not survive a restart: %s: %s", self._overrides.path, e)

    def _current_model(self) -> Model:
        with self._lock:
            assert self._model is not None
            return self._model

    def activate_bundle(self, path: Path, who: str) -> dict:
        """Verify a bundle and swap it in between two parts; the old one is kept for roll-back."""
        try:
            model = self._load_model(Path(path))
        except KenpinError as e:
            self.store.audit("bundle_refused", {"path": str(path), "reason": str(e)}, who)
            raise
        with self._lock:
            old, self._previous_model, self._model = self._model, self._model, model
        self.store.audit("bundle_activated", {"bundle": model.bundle.bundle_id, "path": str(path),
                                              "previous": old.bundle.bundle_id if old else None}, who)
        log.info("bundle %s activated by %s (previous %s kept for roll-back)", model.bundle.bundle_id, who,
                 old.bundle.bundle_id if old else None)
        self._keep_overrides()
        return model.summary()

    def rollback_bundle(self, who: str) -> dict:
        """Swap back to the previous bundle (the current one becomes the roll-back target)."""
        with self._lock:
            if self._previous_model is None:
                raise KenpinError("no previous bundle to roll back to; activate a bundle first")
            self._model, self._previous_model = self._previous_model, self._model
            model, old = self._model, self._previous_model
        self.store.audit("bundle_rolled_back", {"bundle": model.bundle.bundle_id, "previous": old.bundle.bundle_id}, who)
        log.info("bundle rolled back to %s by %s", model.bundle.bundle_id, who)
        self._keep_overrides()
        return model.summary()

    # -- threshold -------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return self._threshold

    def set_threshold(self, value: float, who: str) -> None:
        """A new normalized threshold from the next part on (audited, undoable)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise KenpinError(f"threshold {value!r}: must be a number between 0 and 1") from None
        if not 0 < value < 1:
            raise KenpinError(f"threshold {value}: must be strictly between 0 and 1 (the calibrated one is 0.5)")
        with self._lock:
            old = self._threshold
            self._threshold_history.append(old)
            self._threshold = value
        self.store.audit("threshold", {"from": old, "to": value}, who)
        self._keep_overrides()

    def undo_threshold(self, who: str) -> float:
        """Restore the threshold before the last change (audited); returns it."""
        with self._lock:
            if not self._threshold_history:
                raise KenpinError("no threshold change to undo")
            old, self._threshold = self._threshold, self._threshold_history.pop()
            value = self._threshold
        self.store.audit("threshold_undo", {"from": old, "to": value}, who)
        self._keep_overrides()
        return value

    # -- triggers, live view, subscribers ---------------------------------------------------
    def trigger(self, source: str = "software") -> int:
        """A part is here: queue a trigger; it gets exactly one verdict. Returns its id."""
        if source not in ("software", "gpio", "opcua"):
            raise KenpinError(f"trigger source {source!r}: must be 'software', 'gpio' or 'opcua'")
        before = self.triggers.refused
        tid = self.triggers.put(source)
        if self.triggers.refused != before:
            self.counters.add("trigger_errors")
        return tid

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """Every verdict recorded from now on, in order; the pipeline never waits for a subscriber."""
        sub = Subscription(maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _recorded(self, rec: VerdictRecord) -> None:
        with self._lock:
            self._last = rec
            subs = list(self._subs)
        for s in subs:
            s.offer(rec)

    def wait_frame(self, seen: int, timeout: float) -> int:
        """Block until the camera has a frame newer than number ``seen`` (at most ``timeout`` s); the
        newest frame's number, ``seen`` when none came. Live views wait here rather than poll."""
        return self.camera_state.wait_newer(seen, timeout)

    def latest_frame(self) -> tuple[bytes, VerdictRecord | None] | None:
        """JPEG of the newest frame (re-encoded at most ``pipeline.live_jpeg_hz`` times a second)."""
        now = time.monotonic()
        with self._lock:
            cached, last = self._jpeg, self._last
        if cached is not None and now - cached[0] < 1.0 / self.config.pipeline.live_jpeg_hz:
            return cached[1], last
        frame, _ = self.camera_state.latest()
        if frame is None:
            return None
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        with self._lock:
            self._jpeg = (now, buf.tobytes())
        return self._jpeg[1], last

    # -- feedback ----------------------------------------------------------------------------
    def mark_wrong(self, verdict_id: int, correct: str, who: str) -> Path:
        """Keep a wrongly judged part's image as training feedback (MVTec layout) + labels.csv."""
        if correct not in FEEDBACK_LABELS:
            raise KenpinError(f"correct label {correct!r}: must be 'good' or 'defect'")
        rec = self.store.get(int(verdict_id))
        if rec is None:
            raise KenpinError(f"verdict {verdict_id}: no such verdict in the log")
        if rec.frame_ref is None:
            raise KenpinError(f"verdict {verdict_id}: its image was not kept (sampled out or removed by retention), "
                              "so it cannot become feedback")
        src = self.store.image_path(rec.frame_ref)
        root = self.config.station.data_dir / "feedback"
        dst = root / "train" / FEEDBACK_LABELS[correct] / f"{rec.id:08d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        labels = root / "labels.csv"
        new = not labels.exists()
        with open(labels, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["image", "label", "verdict_id", "station_verdict", "score", "bundle_id", "who", "time"])
            w.writerow([dst.relative_to(root).as_posix(), correct, rec.id, rec.verdict, f"{rec.score:.4f}",
                        rec.bundle_id, who, f"{time.time():.3f}"])
        self.store.audit("mark_wrong", {"verdict_id": rec.id, "station_verdict": rec.verdict, "correct": correct,
                                        "image": dst.relative_to(root).as_posix()}, who)
        return dst

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything the dashboard's station page and the PLC-style status show, JSON-ready."""
        counters, processing = self.counters.snapshot()
        model = self._model
        cam = self.camera_state
        return {
            "name": self.name, "version": kenpin_version(), "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1), "running": self.running,
            "bundle": model.summary() if model else None,
            "previous_bundle": self._previous_model.bundle.bundle_id if self._previous_model else None,
            "threshold": self._threshold, "config": self.config.summary(),
            "camera": {"source": cam.description, "connected": cam.connected, "reconnects": cam.reconnects,
                       "fps": round(cam.fps, 1), "frames_flowing": self.frames_flowing()},
            "counters": counters,
            "queues": {"triggers_pending": len(self.triggers), "triggers_max_backlog": self.triggers.max_seen,
                       "triggers_refused": self.triggers.refused, "inference": self._inq.qsize(),
                       "score": self._midq.qsize(), "record": self._outq.qsize(), "subscribers": len(self._subs),
                       "subscriber_dropped": sum(s.dropped for s in self._subs)},
            "processing_ms": processing,
            "store": self.store.health(),
        }
