"""Prometheus metrics of a real station: what a fleet's Prometheus would scrape from /metrics."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.bench.products import product_copy
from device.station.config import parse_config
from device.station.metrics import StationMetrics, exposition
from device.station.station import Station
from tests.station_helpers import replay_folder
from tests.station_helpers import station_config as products_station_config


def station_config(tiny_line, tiny_bundle, data_dir, **extra: str):
    text = f"""
station: {{name: press-3, data_dir: {data_dir}}}
bundle: {{path: {tiny_bundle}, precision: fp32, threads: 1}}
camera: {{type: replay, replay: {{folder: {tiny_line / 'train' / 'good'}, fps: 0, loop: false}}}}
trigger: {{mode: {extra.get('mode', 'free-run')}}}
"""
    return parse_config(text, "test.yaml")


def wait_recorded(station: Station, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(station.store.query(limit=10_000)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"only {len(station.store.query(limit=10_000))} of {n} verdicts recorded")


def scrape(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def running(tiny_line, tiny_bundle, tmp_path):
    st = Station(station_config(tiny_line, tiny_bundle, tmp_path / "data"))
    st.start()
    yield st
    st.stop()


def test_metrics_count_every_verdict_of_a_replay(running):
    n = len(list((running.config.camera.replay.folder).glob("*.png")))
    assert n > 0
    wait_recorded(running, n)
    m = scrape(exposition(running))
    counts = {v: m[("kenpin_verdicts_total", (("product", "0"), ("verdict", v)))] for v in ("ok", "defect", "retake")}
    assert sum(counts.values()) == n
    # The score histogram saw each recorded verdict once, split by verdict like the counters.
    for v, c in counts.items():
        assert m[("kenpin_score_count", (("product", "0"), ("verdict", v)))] == c
        assert m[("kenpin_score_bucket", (("le", "+Inf"), ("product", "0"), ("verdict", v)))] == c
    assert m[("kenpin_latency_seconds_count", (("product", "0"),))] == n
    recorded = running.store.query(limit=10_000)
    assert m[("kenpin_latency_seconds_sum", (("product", "0"),))] == pytest.approx(sum(r.latency_ms for r in recorded) / 1000)
    below = sum(r.score <= 0.5 for r in recorded if r.verdict == "ok")
    assert m[("kenpin_score_bucket", (("le", "0.5"), ("product", "0"), ("verdict", "ok")))] == below
    assert m[("kenpin_camera_reconnects_total", ())] == 0
    assert ("kenpin_queue_depth", (("queue", "inference"),)) in m
    assert m[("kenpin_record_degraded", ())] == 0
    assert m[("kenpin_threshold", ())] == 0.5
    info = [k for k in m if k[0] == "kenpin_station_info"]
    assert info and ("station", "press-3") in info[0][1]


def test_scrapes_never_count_a_verdict_twice(running):
    n = len(list((running.config.camera.replay.folder).glob("*.png")))
    metrics = StationMetrics(running)
    first = scrape(metrics.exposition())  # perhaps mid-replay
    wait_recorded(running, n)
    second, third = scrape(metrics.exposition()), scrape(metrics.exposition())
    total = sum(second[("kenpin_score_count", (("product", "0"), ("verdict", v)))] for v in ("ok", "defect", "retake"))

    def counted(s: dict) -> dict:  # the free disk is the machine's, moved by any other writer
        return {k: v for k, v in s.items() if k[0] != "kenpin_record_disk_free_bytes"}

    assert total == n and counted(second) == counted(third)
    assert first[("kenpin_latency_seconds_count", (("product", "0"),))] <= n


def test_metrics_have_no_process_wide_state(running, tiny_line, tiny_bundle, tmp_path):
    from prometheus_client import REGISTRY

    exposition(running)
    assert not any(n.startswith("kenpin_") for n in REGISTRY._names_to_collectors)  # the default registry is untouched


def test_each_products_histograms_count_only_its_own_parts(tiny_line, tiny_bundle, tmp_path):
    nut = product_copy(tiny_bundle, tmp_path / "nut", "nut")
    extra = (f"products:\n  - {{number: 1, name: bolt, bundle: {tiny_bundle}}}\n"
             f"  - {{number: 2, name: nut, bundle: {nut}, threshold: 0.6}}\n")
    st = Station(products_station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"),
                                         extra=extra, loop=True, mode="software"))
    st.start()
    try:
        sub = st.subscribe()
        for product, parts in ((1, 2), (2, 3)):  # unequal counts: a series fed the other's parts would show it
            st.switch_product(product, who="test")
            for _ in range(parts):
                st.trigger()
                sub.get(timeout=30)
        wait_recorded(st, 5)
        m = scrape(exposition(st))
        recorded = st.store.query(limit=10_000)
    finally:
        st.stop()
    for product, parts in (("1", 2), ("2", 3)):
        mine = [r for r in recorded if str(r.product) == product]
        assert len(mine) == parts
        assert m[("kenpin_latency_seconds_count", (("product", product),))] == parts
        assert m[("kenpin_latency_seconds_sum", (("product", product),))] == \
            pytest.approx(sum(r.latency_ms for r in mine) / 1000)
        for v in ("ok", "defect", "retake"):
            assert m[("kenpin_score_count", (("product", product), ("verdict", v)))] == \
                sum(r.verdict == v for r in mine) == m[("kenpin_verdicts_total", (("product", product), ("verdict", v)))]
    assert not any(k[0].startswith("kenpin_score") and ("product", "0") in k[1] for k in m)
