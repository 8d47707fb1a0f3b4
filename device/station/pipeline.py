"""The workers of the station: capture → embed → score → record, joined by bounded queues.

Capture (:mod:`device.station.capture`) reads frames, keeps the newest for the live view and hands the frames to inspect to
inference (free-run skips under load and counts it; triggered modes never skip a trigger).
Capture also preprocesses; the model runs in its own stage and the reference search and decision
in the next, so on a multi-core Pi they overlap (a bundle swap takes effect between two parts).
With ``pipeline.workers`` > 1, N inspect workers each take a whole frame (model, then search)
instead, and :class:`InOrder` hands their decisions to the recorder in capture order: small
models scale poorly across ONNX Runtime's threads, frames side by side scale well.
The recorder makes the verdict durable, then fires the actuator, logs the verdict line and tells
subscribers — in that order, so nothing is acknowledged before it is recorded. Threshold and pulse
timing are the part's own product's (``Job.product``, bound when its trigger came).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from device.errors import KenpinError
from device.station.counters import Counters
from device.station.model import Decision, Job
from device.station.record import VerdictRecord

log = logging.getLogger("kenpin.station")


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
                 station: str, counters: Counters) -> None:
        super().__init__(name="score", daemon=True)
        self.midq, self.outq, self.station, self.counters = midq, outq, station, counters

    def run(self) -> None:
        while (job := self.midq.get()) is not None:
            try:
                decision = decide(job, self.station, self.counters)
            except Exception:  # as above: counted and logged
                self.counters.add("trigger_errors")
                log.exception("scoring failed for trigger %s (%s)", job.trigger_id, job.source)
                continue
            if decision is not None:
                self.outq.put(decision)
        self.outq.put(None)


def decide(job: Job, station: str, counters: Counters) -> Decision | None:
    """The part's judgement with its own product's model and threshold; None for a free-run frame the
    gate retakes once its score is known (the guard's near-threshold rule: the floors alone were
    checked at capture): like any free-run retake it is skipped, counted, never recorded or pulsed."""
    decision = job.model.decide(job, job.product.threshold, station, job.product.number)
    if job.trigger_id is None and job.source == "free-run" and decision.record.verdict == "retake":
        counters.add("triggers", -1)  # capture counted it as a part; it is a skipped frame after all
        counters.add("gate_skipped_frames")
        return None
    return decision


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
                 station: str, counters: Counters) -> None:
        super().__init__(name=f"inspect-{index}", daemon=True)
        self.inq, self.slots, self.order = inq, slots, order
        self.station, self.counters = station, counters

    def run(self) -> None:
        while (job := self.inq.get()) is not None:
            self.slots.release()
            decision = None
            try:
                job.model.embed(job)
                decision = decide(job, self.station, self.counters)
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
            recs = self.store.record_many([(d.record, d.job.kept_image, d.heatmap) for d in batch])
        except KenpinError as e:  # the store degrades rather than raising; belt and braces
            log.error("recording failed: %s", e)
            recs = [d.record for d in batch]
        for d, rec in zip(batch, recs):
            self.actuator.fire(rec.verdict, pulse_ms=d.job.product.pulse_ms, delay_ms=d.job.product.delay_ms)
            self.counters.verdict(rec)
            log.info("verdict id=%s trigger=%s source=%s verdict=%s%s score=%.3f quality=%s grade=%s latency_ms=%.1f",
                     rec.id, rec.trigger_id, rec.trigger_source, rec.verdict,
                     f" ({rec.retake_reason})" if rec.retake_reason else "", rec.score,
                     "-" if rec.quality is None else f"{rec.quality:.3f}",
                     "-" if rec.grade is None else f"{rec.grade:.2f}", rec.latency_ms)
            self.on_recorded(rec)
