"""Prometheus metrics of one station, read at scrape time (no threads, no global registry).

Counters and gauges come from ``station.status()`` (the pipeline's own exact counters). The score
and latency histograms, per product, follow the verdict log: each scrape reads the rows recorded
since the last one (by id), so no verdict is missed however slowly Prometheus scrapes, and nothing
runs between scrapes. Counters restart with the daemon; Prometheus' rate() handles that.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from device.station.record import VERDICTS

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Normalized scores: the threshold sits at 0.5, so the buckets are finest around it.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class _Histogram:
    """Cumulative bucket counts plus sum, fed with batches of values."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds)
        self.counts = np.zeros(len(bounds) + 1, np.int64)  # last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, values: np.ndarray) -> None:
        if values.size:
            # Prometheus buckets are "≤ le": side="left" puts a value equal to a bound in that bucket.
            self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
            self.sum += float(values.sum())

    def family_buckets(self) -> list[tuple[str, float]]:
        cum = np.cumsum(self.counts)
        return [(_le(b), float(c)) for b, c in zip(self.bounds, cum[:-1])] + [("+Inf", float(cum[-1]))]


def _le(bound: float) -> str:
    return repr(float(bound))


class StationMetrics:
    """The registry of one station: ``exposition()`` is what /metrics serves."""

    def __init__(self, station: Any) -> None:
        self.station = station
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._lock = threading.Lock()  # concurrent scrapes must not count rows twice
        self._last_id: int | None = None
        # product label ("0" without products, as kenpin_verdicts) -> histograms
        self._scores: dict[str, dict[str, _Histogram]] = {}
        self._latency: dict[str, _Histogram] = {}

    def exposition(self) -> bytes:
        """The Prometheus text exposition (serve with ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    # prometheus_client calls collect() on each scrape.
    def collect(self) -> Iterator[Metric]:
        status = self.station.status()
        yield from _status_metrics(self.station.name, status)
        with self._lock:
            # Every configured product gets its series even before its first part, like its counters.
            for p in status.get("products", []):
                self._product(str(p["number"]))
            self._follow_log()
            yield from self._histograms()

    def _product(self, label: str) -> tuple[dict[str, _Histogram], _Histogram]:
        """The score histograms (by verdict) and the latency histogram of one product, made on first use."""
        if label not in self._latency:
            self._scores[label] = {v: _Histogram(SCORE_BUCKETS) for v in VERDICTS}
            self._latency[label] = _Histogram(LATENCY_BUCKETS)
        return self._scores[label], self._latency[label]

    def _follow_log(self) -> None:
        store = self.station.store
        if self._last_id is None:
            first = store.first_id_since(self.station.started_at)
            if first is None:
                return  # nothing recorded since start yet: begin with the first row that is
            self._last_id = first - 1
        while rows := store.observations_after(self._last_id):
            self._observe(rows)
            self._last_id = rows[-1][0]

    def _observe(self, rows: list[tuple[int, str, float, float, int]]) -> None:
        """Add rows of (id, verdict, score, latency_ms, product) to their product's histograms."""
        verdicts = np.array([r[1] for r in rows])
        scores = np.array([r[2] for r in rows], np.float64)
        latency = np.array([r[3] for r in rows], np.float64) / 1000.0
        products = np.array([str(r[4]) for r in rows])
        for label in dict.fromkeys(products.tolist()):  # first-seen order
            mine = products == label
            by_verdict, lat = self._product(label)
            for v, hist in by_verdict.items():
                hist.observe(scores[mine & (verdicts == v)])
            lat.observe(latency[mine])

    def _histograms(self) -> Iterator[Metric]:
        score = HistogramMetricFamily("kenpin_score", "Normalized anomaly score of recorded verdicts, by product "
                                      "(decision threshold at 0.5 unless changed)", labels=["product", "verdict"])
        lat = HistogramMetricFamily("kenpin_latency_seconds", "Capture-to-verdict latency of recorded verdicts, "
                                    "by product", labels=["product"])
        for label, by_verdict in self._scores.items():
            for v, hist in by_verdict.items():
                score.add_metric([label, v], hist.family_buckets(), hist.sum)
            lat.add_metric([label], self._latency[label].family_buckets(), self._latency[label].sum)
        yield score
        yield lat


def _status_metrics(name: str, s: dict[str, Any]) -> Iterator[Metric]:
    c = s.get("counters", {})
    yield from _product_metrics(s)
    for key, help_ in (("triggers", "Triggers received (parts announced)"),
                       ("trigger_errors", "Triggers that got no verdict (refused or failed)"),
                       ("skipped_frames", "Free-run frames skipped under load"),
                       ("burst_frames", "Camera frames read for triggered parts (trigger.burst per part)"),
                       ("gate_skipped_frames", "Free-run frames skipped because the quality gate would retake them")):
        yield CounterMetricFamily(f"kenpin_{key}", help_, value=c.get(key, 0))
    cam = s.get("camera", {})
    yield CounterMetricFamily("kenpin_camera_reconnects", "Camera reconnections", value=cam.get("reconnects", 0))
    yield GaugeMetricFamily("kenpin_camera_connected", "1 while the camera delivers frames",
                            value=1.0 if cam.get("connected") else 0.0)
    yield GaugeMetricFamily("kenpin_camera_fps", "Frames per second from the camera", value=cam.get("fps") or 0.0)
    depth = GaugeMetricFamily("kenpin_queue_depth", "Items waiting in the station's queues", labels=["queue"])
    for q, n in s.get("queues", {}).items():
        if q in ("inference", "record", "triggers_pending"):
            depth.add_metric([q], n)
    yield depth
    yield from _record_metrics(s.get("store", {}))
    yield GaugeMetricFamily("kenpin_threshold", "Decision threshold in use (normalized score)",
                            value=s.get("threshold") or 0.0)
    yield GaugeMetricFamily("kenpin_start_time_seconds", "Unix time the station started",
                            value=s.get("started_at") or 0.0)
    bundle = s.get("bundle") or {}
    info = GaugeMetricFamily("kenpin_station_info", "Constant 1: station name, version, bundle and variant in use",
                             labels=["station", "version", "bundle", "variant"])
    info.add_metric([name, str(s.get("version", "")), str(bundle.get("id", "")), str(bundle.get("precision", ""))], 1.0)
    yield info
    yield GaugeMetricFamily("kenpin_bundle_verified", "1 when the bundle in use passed its self-check on this CPU, "
                            "0 when it could not be verified here (no probe set)",
                            value=1.0 if bundle.get("verified_on_this_cpu") else 0.0)
    yield GaugeMetricFamily("kenpin_self_check_seconds", "Time the bundle's self-check took at load",
                            value=bundle.get("self_check_seconds") or 0.0)


def _product_metrics(s: dict[str, Any]) -> Iterator[Metric]:
    """Verdicts per product and verdict (sum by verdict for the station's total), which product is
    active, and each product's name and bundle (to label a dashboard's series)."""
    verdicts = CounterMetricFamily("kenpin_verdicts", "Verdicts decided, by product number and verdict",
                                   labels=["product", "verdict"])
    info = GaugeMetricFamily("kenpin_product_info", "Constant 1: each product's number, name and bundle in use",
                             labels=["product", "name", "bundle"])
    for p in s.get("products", []):
        for v in VERDICTS:
            verdicts.add_metric([str(p["number"]), v], p["counters"].get(v, 0))
        info.add_metric([str(p["number"]), p["name"], p["bundle_id"]], 1.0)
    yield verdicts
    yield info
    active = s.get("product") or {}
    yield GaugeMetricFamily("kenpin_active_product", "Number of the product new parts are judged as",
                            value=active.get("number", 0))


def _record_metrics(h: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("kenpin_record_degraded", "1 while recording is degraded (disk full, I/O errors)",
                            value=1.0 if h.get("degraded") else 0.0)
    failures = CounterMetricFamily("kenpin_record_failures", "Recording failures, by what failed", labels=["kind"])
    for kind, n in h.get("failures", {}).items():
        failures.add_metric([kind], n)
    yield failures
    for key, help_ in (("images_bytes", "Bytes of kept images"), ("image_budget_bytes", "Image disk budget"),
                       ("db_bytes", "Bytes of the verdict database (with its WAL)"),
                       ("disk_free_bytes", "Free bytes on the data directory's disk")):
        if h.get(key) is not None:
            yield GaugeMetricFamily(f"kenpin_record_{key}", help_, value=h[key])


def exposition(station: Any) -> bytes:
    """Prometheus text for ``station`` (what the dashboard serves at /metrics).

    The histogram state lives with the station (``station.metrics`` when it has one, else created
    on the first scrape and kept on the station), so there is no process-wide registry.
    """
    metrics = getattr(station, "metrics", None)
    if not isinstance(metrics, StationMetrics):
        metrics = StationMetrics(station)
        station.metrics = metrics
    return metrics.exposition()
