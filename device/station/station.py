"""The Station: one object that starts the workers and answers the dashboard, metrics and MQTT.

Start-up opens things in order (store, camera, every product's model, actuator, recorder, score,
embed, capture, triggers) and ``stop`` closes them in reverse, so the parts in flight are finished
and recorded before the store closes. The products and which one is active are
:mod:`device.station.products`; the station audits and keeps their changes.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
from threadpoolctl import threadpool_limits

from device.errors import KenpinError
from device.station.actuator import make_actuator
from device.station.camera import Backoff, Camera, CameraLost, make_camera
from device.station.config import StationConfig
from device.station.overrides import OverrideFile
from device.station.capture import CameraState, CaptureWorker
from device.station.counters import Counters
from device.station.feedback import keep_feedback
from device.station.model import Decision, Job
from device.station.pipeline import EmbedWorker, InOrder, InspectWorker, RecorderWorker, ScoreWorker
from device.station.products import Binding, Product, ProductTable, configured, load_model, load_products
from device.station.record import TRIGGER_SOURCES, VerdictRecord
from device.station.store import VerdictStore
from device.station.triggers import TRIGGER_INPUTS, FreeRun, TriggerQueue
from device.version import kenpin_version

log = logging.getLogger("kenpin.station")


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

    def follow(self, stop: threading.Event, poll_s: float = 0.2) -> Iterator[VerdictRecord]:
        """Every verdict in recording order until ``stop`` is set (checked every ``poll_s``)."""
        while not stop.is_set():
            try:
                yield self._q.get(timeout=poll_s)
            except queue.Empty:
                continue


class Station:
    """The station daemon's core: camera → verdict → reject signal → record."""

    def __init__(self, config: StationConfig, camera: Camera | None = None, pin_factory: Any = None) -> None:
        self.config = config
        self.name = config.station.name
        self.started_at = time.time()
        self.store = VerdictStore(config.station.data_dir, config.record.image_budget_mb,
                                  config.record.ok_image_fraction, config.record.seed, config.record.reserve_mb,
                                  config.record.frame_format)
        self._camera = camera if camera is not None else make_camera(config.camera.type, config.camera.settings)
        self._pin_factory = pin_factory
        self._lock = threading.Lock()
        self._overrides = OverrideFile(config.station.data_dir)
        self._kept = self._overrides.load(configured(config), config.start_product)
        self._products: ProductTable | None = None  # loaded at start
        self._last_refusal: tuple[str, str, int] | None = None  # (who, number, active): last audited refusal
        self.counters = Counters()
        self.camera_state = CameraState(self._camera.description)
        self.triggers = TriggerQueue(config.trigger.max_backlog, bind=self._bind_if_started)
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
        """Open the camera and every product's model, then start recorder, inference workers and capture,
        in that order."""
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
            self._products = table = load_products(self.config, self.store, self._kept)
        except KenpinError:
            self._camera.close()
            self.store.close()
            raise
        self._actuator = make_actuator(self.config.actuator, self._pin_factory)
        model, active = table.model, table.active
        self.store.audit("start", {"bundle": model.bundle.bundle_id, "precision": model.precision,
                                   "threshold": active.threshold, "product": active.number,
                                   "products": [p.to_dict() for p in table.all()],
                                   "restored_from_dashboard": bool(self._kept.products or self._kept.product is not None),
                                   "config": self.config.summary()})
        c, freerun = self.config, None
        if c.trigger.mode == "free-run":
            freerun = FreeRun(c.trigger.every_n, c.trigger.rate_hz)
        self._workers = [RecorderWorker(self._outq, self.store, self._actuator, self.counters, self._recorded),
                         *self._inference_workers(),
                         CaptureWorker(self._camera, self.camera_state, self._inq, self._slots, self.triggers, freerun,
                                       self.counters, Backoff(c.camera.reconnect_initial_s, c.camera.reconnect_max_s),
                                       self._stop, table.bind, c.trigger.burst)]
        for w in self._workers:
            w.start()
        if c.trigger.mode in TRIGGER_INPUTS:
            self._trigger_input = TRIGGER_INPUTS[c.trigger.mode](c.trigger, self.triggers, self._pin_factory)
        self.running = True
        log.info("station %s running: product %d (%s), bundle %s (%s), camera %s, trigger %s", self.name, active.number,
                 active.name, model.bundle.bundle_id, model.precision, self._camera.description, c.trigger.mode)

    def _inference_workers(self) -> list[threading.Thread]:
        """Embed and score stages (one worker), or N whole-frame workers handing over in order."""
        n = self.config.pipeline.workers
        if n == 1:
            return [ScoreWorker(self._midq, self._outq, self.name, self.counters),
                    EmbedWorker(self._inq, self._slots, self._midq, self.counters)]
        # N searches side by side: one BLAS thread each, or they oversubscribe the cores
        # (measured on 2 cores, 2 workers: 193 frames/s with 1 BLAS thread, 125 with 2).
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        order = InOrder(self._outq, n)
        return [InspectWorker(i, self._inq, self._slots, order, self.name, self.counters) for i in range(n)]

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

    # -- products, bundle swap, threshold --------------------------------------------------
    def _table(self) -> ProductTable:
        if self._products is None:
            raise KenpinError(f"station {self.name} is not started; its products are loaded at start")
        return self._products

    def _bind_if_started(self) -> Binding | None:
        """A queued trigger's product; before start, None (the part is then bound when captured)."""
        return self._products.bind() if self._products is not None else None

    @property
    def products(self) -> list[Product]:
        """Every product in config order (once started)."""
        return self._table().all()

    @property
    def active_product(self) -> Product:
        """The product new parts are judged as (once started)."""
        return self._table().active

    def switch_product(self, number: int, who: str) -> dict:
        """Make product ``number`` active: parts announced from now on are judged with its bundle,
        threshold and pulse; parts already announced keep theirs. Audited and kept across a restart.
        Switching to the active product changes nothing and is not audited (a PLC may write the
        same number every scan). An unknown number raises KenpinError, the product stays, and the
        refusal is audited (``product_switch_refused``) with who asked and why."""
        table = self._table()
        try:
            old, new = table.switch(number)
        except KenpinError as e:
            log.warning("product switch by %s refused: %s", who, e)
            self._audit_refused_switch(number, who, table.active.number, e)
            raise
        if old.number != new.number:
            self.store.audit("product_switch", {"from": old.number, "to": new.number, "name": new.name,
                                                "bundle": new.bundle_id}, who)
            log.info("product %d (%s) active, switched by %s from %d", new.number, new.name, who, old.number)
            self._keep_overrides()
        return new.to_dict()

    def _audit_refused_switch(self, number: Any, who: str, active: int, why: KenpinError) -> None:
        """Audit a refused switch once for a run of identical ones: a PLC writing an unknown number
        every scan must not add a durable row per scan (a racing duplicate is harmless)."""
        key = (who, repr(number), active)
        if key != self._last_refusal:
            self.store.audit("product_switch_refused", {"to": number, "active": active, "reason": str(why)}, who)
            self._last_refusal = key  # after the write: a refusal that could not be audited is tried again

    def _keep_overrides(self) -> None:
        """Write each product's threshold and bundle and the active product, so a restart or power cut keeps them."""
        try:
            self._overrides.save(lambda: self._table().kept(self.config.start_product))
        except OSError as e:  # verdicts keep flowing; the change holds until the next restart
            log.error("the change is in effect but will not survive a restart: %s: %s", self._overrides.path, e)

    def activate_bundle(self, path: Path, who: str) -> dict:
        """Verify a bundle and swap it in between two parts, for the product active when asked; the
        old one is kept for that product's roll-back.

        The dashboard's upload and roll-back act on the active product because that is what the
        engineer sees running on the station page; the product is fixed when the call starts, so a
        switch during the verification does not send the bundle to another product."""
        number = self._table().active.number
        try:
            model = load_model(Path(path), self.config, self.store)
        except KenpinError as e:
            self.store.audit("bundle_refused", {"path": str(path), "product": number, "reason": str(e)}, who)
            raise
        product, old = self._table().swap_model(model, number)
        self.store.audit("bundle_activated", {"bundle": model.bundle.bundle_id, "path": str(path),
                                              "product": product.number, "previous": old.bundle.bundle_id}, who)
        log.info("product %d: bundle %s activated by %s (previous %s kept for roll-back)", product.number,
                 model.bundle.bundle_id, who, old.bundle.bundle_id)
        self._keep_overrides()
        return model.summary()

    def rollback_bundle(self, who: str) -> dict:
        """Swap the active product's previous bundle back (the current one becomes its roll-back target)."""
        now, old = self._table().roll_back()
        product = now.product
        self.store.audit("bundle_rolled_back", {"bundle": product.bundle_id, "product": product.number,
                                                "previous": old.bundle.bundle_id}, who)
        log.info("product %d: bundle rolled back to %s by %s", product.number, product.bundle_id, who)
        self._keep_overrides()
        return now.model.summary()

    @property
    def threshold(self) -> float:
        """The active product's threshold (before start: the configured one of the starting product)."""
        if self._products is None:
            return configured(self.config)[self.config.start_product][1]
        return self._products.active.threshold

    def set_threshold(self, value: float, who: str) -> None:
        """A new normalized threshold for the active product, from its next part on (audited, undoable)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise KenpinError(f"threshold {value!r}: must be a number between 0 and 1") from None
        if not 0 < value < 1:
            raise KenpinError(f"threshold {value}: must be strictly between 0 and 1 (the calibrated one is 0.5)")
        product, old = self._table().set_threshold(value)
        self.store.audit("threshold", {"from": old, "to": value, "product": product.number}, who)
        self._keep_overrides()

    def undo_threshold(self, who: str) -> float:
        """Restore the active product's threshold before its last change (audited); returns it."""
        product, old = self._table().undo_threshold()
        self.store.audit("threshold_undo", {"from": old, "to": product.threshold, "product": product.number}, who)
        self._keep_overrides()
        return product.threshold

    # -- triggers, live view, subscribers ---------------------------------------------------
    def trigger(self, source: str = "software") -> int:
        """A part is here: queue a trigger; it gets exactly one verdict (``VerdictRecord.trigger_id``),
        judged as the product active now. Returns its id."""
        announced = [s for s in TRIGGER_SOURCES if s != "free-run"]
        if source not in announced:
            raise KenpinError(f"trigger source {source!r}: must be one of {announced}")
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
        """Keep a wrongly judged part's image as training feedback (MVTec layout) + labels.csv
        (per product when the config lists products: see :mod:`device.station.feedback`)."""
        return keep_feedback(self.store, self.config.station.data_dir, bool(self.config.products), verdict_id,
                             correct, who)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything the dashboard's station page and the PLC-style status show, JSON-ready."""
        counters, processing = self.counters.snapshot()
        table = self._products
        model, previous = (table.model, table.previous_model) if table else (None, None)
        cam = self.camera_state
        return {
            "name": self.name, "version": kenpin_version(), "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1), "running": self.running,
            "bundle": model.summary() if model else None,
            "previous_bundle": previous.bundle.bundle_id if previous else None,
            "threshold": self.threshold, "config": self.config.summary(),
            "product": table.active.to_dict() if table else None, "products": self._product_status(),
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

    def _product_status(self) -> list[dict[str, Any]]:
        """Each product with its verdicts since start (the station page's per-product counters)."""
        if self._products is None:
            return []
        counts = self.counters.by_product()
        return [{**p.to_dict(), "counters": counts.get(p.number, {"ok": 0, "defect": 0, "retake": 0})}
                for p in self._products.all()]
