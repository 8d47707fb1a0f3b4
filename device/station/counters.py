"""The station's PLC-style counters (overall and per product) and its processing-time window, shared by the workers."""
from __future__ import annotations

import collections
import math
import threading

import numpy as np

from device.station.record import VERDICTS, VerdictRecord

# burst_frames: camera frames read for triggered parts (trigger.burst per part; 1 each without a burst);
# gate_skipped_frames: free-run frames the quality gate would retake, skipped without a verdict
COUNTS = ("triggers", "ok", "defect", "retake", "trigger_errors", "skipped_frames", "burst_frames",
          "gate_skipped_frames")


class Counters:
    """PLC-style counters and the processing-time window, shared by the workers."""

    def __init__(self, window: int = 4096) -> None:
        self.lock = threading.Lock()
        self.triggers = self.ok = self.defect = self.retake = 0
        self.trigger_errors = self.skipped_frames = self.frames = 0
        self.burst_frames = self.gate_skipped_frames = 0
        self._per_product: dict[int, dict[str, int]] = {}
        self._lat: collections.deque[float] = collections.deque(maxlen=window)
        self._min, self._max, self._sum, self._n = math.inf, 0.0, 0.0, 0

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def verdict(self, rec: VerdictRecord) -> None:
        with self.lock:
            setattr(self, rec.verdict, getattr(self, rec.verdict) + 1)
            per = self._per_product.setdefault(rec.product, dict.fromkeys(VERDICTS, 0))
            per[rec.verdict] += 1
            self._lat.append(rec.latency_ms)
            self._min, self._max = min(self._min, rec.latency_ms), max(self._max, rec.latency_ms)
            self._sum += rec.latency_ms
            self._n += 1

    def counts(self) -> dict[str, int]:
        """The counters alone: cheap enough to read after every verdict (no percentiles)."""
        with self.lock:
            return {k: getattr(self, k) for k in COUNTS}

    def snapshot(self) -> tuple[dict[str, int], dict[str, float | None]]:
        """(counters, processing_ms) — processing percentiles over the last ``window`` parts."""
        with self.lock:
            counts = {k: getattr(self, k) for k in COUNTS}
            lat = np.asarray(self._lat, dtype=np.float64)
            if self._n:
                p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
                ms = {"min": self._min, "avg": self._sum / self._n, "max": self._max, "p50": p50, "p99": p99}
            else:
                ms = {k: None for k in ("min", "avg", "max", "p50", "p99")}
        return counts, {k: (round(v, 2) if v is not None else None) for k, v in ms.items()}

    def by_product(self) -> dict[int, dict[str, int]]:
        """Verdicts decided since start per product number (only products that had a part)."""
        with self.lock:
            return {n: dict(c) for n, c in self._per_product.items()}
