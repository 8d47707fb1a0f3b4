"""Products on the real station (tiny bundles, replay camera): switching between two parts, every
verdict judged and recorded as the product its trigger was announced under."""
from __future__ import annotations

import shutil
import sqlite3
import threading

import numpy as np
import pytest

from device.bench.products import judge_run, product_copy, switch_under_load
from device.errors import KenpinError
from device.station.camera import ReplayCamera
from device.station.products import Product
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory):
    """Two bundles with distinct ids: the tiny one, and a copy that also holds a file naming its product."""
    other = product_copy(tiny_bundle, tmp_path_factory.mktemp("products") / "nut", "nut")
    return tiny_bundle, other


@pytest.fixture()
def replay(tiny_line, tmp_path):
    return replay_folder(tiny_line, tmp_path / "replay")


def products_yaml(bolt, nut, start: int | None = None) -> str:
    return (f"products:\n  - {{number: 1, name: bolt, bundle: {bolt}}}\n"
            f"  - {{number: 2, name: nut, bundle: {nut}, threshold: 0.6, pulse_ms: 20, delay_ms: 5}}\n"
            + (f"product: {start}\n" if start is not None else ""))


def start(tmp_path, bundles, replay, start_product=None, camera=None, **kw) -> Station:
    """A started station with products 1 (bolt, the tiny bundle) and 2 (nut, its copy; threshold 0.6)."""
    cfg = station_config(tmp_path, bundles[0], replay, mode=kw.pop("mode", "software"), loop=True,
                         extra=products_yaml(*bundles, start_product))
    st = Station(cfg, camera=camera)
    st.start()
    return st


def test_a_switch_changes_bundle_threshold_and_product_of_the_next_parts_and_is_audited(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay)
    try:
        bolt, nut = st.products
        assert isinstance(bolt, Product) and (bolt.number, bolt.name, nut.name) == (1, "bolt", "nut")
        assert bolt.bundle_id != nut.bundle_id and (bolt.threshold, nut.threshold) == (0.5, 0.6)
        assert (nut.pulse_ms, nut.delay_ms, bolt.pulse_ms) == (20.0, 5.0, 50.0)  # bolt: the actuator section's
        assert st.active_product == bolt  # the first listed, without product:
        sub = st.subscribe()
        st.trigger()
        first = sub.get(timeout=10)
        assert st.switch_product(2, who="plc 10.0.0.5") == nut.to_dict()
        st.trigger("modbus")
        second = sub.get(timeout=10)
        assert (first.product, first.bundle_id, first.threshold) == (1, bolt.bundle_id, 0.5)
        assert (second.product, second.bundle_id, second.threshold, second.trigger_source) == (2, nut.bundle_id, 0.6, "modbus")
        audit = st.store.audit_log(5)
        switch = next(a for a in audit if a["event"] == "product_switch")
        assert switch["who"] == "plc 10.0.0.5" and switch["detail"]["from"] == 1 and switch["detail"]["to"] == 2
        assert st.status()["product"]["number"] == 2 and st.status()["bundle"]["id"] == nut.bundle_id
        st.switch_product(2, who="plc 10.0.0.5")  # the same number again (a PLC writing every scan)
        assert [a["event"] for a in st.store.audit_log(10)].count("product_switch") == 1
    finally:
        st.stop()


def test_a_switch_to_an_unknown_number_is_refused_and_the_product_stays(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay, start_product=2)
    try:
        sub = st.subscribe()
        for bad in (7, -1, "2", None):
            with pytest.raises(KenpinError, match=rf"product {bad!r}: no such product on this station; "
                                                  r"it knows 1 \(bolt\), 2 \(nut\)$"):
                st.switch_product(bad, who="plc")
        assert st.active_product.number == 2
        assert st.switch_product(np.uint16(1), who="plc")["number"] == 1  # a protocol library's integer
        st.switch_product(2, who="plc")
        st.trigger()
        assert sub.get(timeout=10).product == 2
        assert [a["event"] for a in st.store.audit_log(20)].count("product_switch") == 2  # the two that were made
    finally:
        st.stop()


def test_a_refused_switch_is_audited_with_who_asked_and_why_and_the_product_stays(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay, start_product=2)
    try:
        for _ in range(3):  # a PLC writing the unknown number every scan: one audit row, not one per scan
            with pytest.raises(KenpinError, match="product 7: no such product"):
                st.switch_product(7, who="modbus 10.0.0.5")
        with pytest.raises(KenpinError, match="product 8: no such product"):
            st.switch_product(8, who="opcua line-1")
        assert st.active_product.number == 2
        audit = st.store.audit_log(20)
        refused = [a for a in audit if a["event"] == "product_switch_refused"]
        assert [(a["who"], a["detail"]["to"], a["detail"]["active"]) for a in refused] == \
            [("opcua line-1", 8, 2), ("modbus 10.0.0.5", 7, 2)]  # newest first
        assert refused[1]["detail"]["reason"].startswith("product 7: no such product on this station; it knows 1 (bolt)")
        assert "product_switch" not in [a["event"] for a in audit]
    finally:
        st.stop()


class GatedCamera(ReplayCamera):
    """A replay camera whose frames wait for ``gate``: triggers stay queued until the test opens it."""

    def __init__(self, folder) -> None:
        super().__init__(folder, fps=0, loop=True)
        self.gate = threading.Event()

    def read(self):
        self.gate.wait(30)
        return super().read()


def test_parts_announced_before_a_switch_are_judged_as_the_product_they_were_announced_under(bundles, replay, tmp_path):
    camera = GatedCamera(replay)
    st = start(tmp_path, bundles, replay, camera=camera)
    try:
        sub = st.subscribe()
        before = [st.trigger() for _ in range(3)]  # queued while the camera waits: not yet captured
        st.switch_product(2, who="qe")
        after = [st.trigger("opcua") for _ in range(3)]
        camera.gate.set()
        recs = [sub.get(timeout=10) for _ in range(6)]
    finally:
        st.stop()
    bolt, nut = st.products
    assert [r.trigger_id for r in recs] == before + after
    assert [(r.product, r.bundle_id, r.threshold) for r in recs] == \
        [(1, bolt.bundle_id, 0.5)] * 3 + [(2, nut.bundle_id, 0.6)] * 3


def test_100_switches_under_load_judge_every_part_as_its_trigger_product_none_lost(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay)
    try:
        products = st.products
        run = switch_under_load(st, switches=100, parts_per_switch=2, backlog=4, timeout_s=120)
    finally:
        st.stop()
    bundle_of = {p.number: p.bundle_id for p in products}
    # checked here against the verdict log itself, trigger by trigger
    rows = sqlite3.connect(tmp_path / "data" / "verdicts.sqlite3").execute(
        "SELECT trigger_id, product, bundle_id FROM verdicts ORDER BY id").fetchall()
    assert sorted(t for t, _, _ in rows) == sorted(run.sent)  # each trigger exactly once: none lost, none doubled
    assert all(p == run.sent[t] and b == bundle_of[run.sent[t]] for t, p, b in rows)
    assert {p for _, p, _ in rows} == {1, 2} and run.switches == 100
    assert run.judged_after_switch > 0 and min(run.in_flight_at_switch) >= 1  # every switch came with parts in flight
    figures = judge_run(tmp_path / "data" / "verdicts.sqlite3", run, bundle_of, {p.number: p.threshold for p in products})
    assert (figures["lost"], figures["doubled"], figures["wrong_bundle"], figures["wrong_threshold"]) == (0, 0, 0, 0)


def test_free_run_judges_each_frame_as_the_product_active_when_it_is_captured(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay, mode="free-run")
    try:
        sub = st.subscribe(maxsize=10_000)
        assert sub.get(timeout=10).product == 1
        st.switch_product(2, who="qe")
        recs = [sub.get(timeout=10) for _ in range(8)]
    finally:
        st.stop()
    products = [r.product for r in recs]
    # frames captured before the switch may still be finishing; from the first one after it, all are nut's
    assert 2 in products and 1 not in products[products.index(2):]
    assert all(r.bundle_id == st.products[r.product - 1].bundle_id for r in recs)


def test_the_active_product_survives_a_restart_until_the_config_names_another(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay)
    try:
        st.switch_product(2, who="qe")
        st.set_threshold(0.7, who="qe")  # the active product's own threshold
    finally:
        st.stop()
    st = start(tmp_path, bundles, replay)  # e.g. after a power cut
    try:
        assert st.active_product.number == 2 and st.threshold == 0.7
        st.switch_product(1, who="qe")
        assert st.threshold == 0.5  # bolt kept its own
    finally:
        st.stop()
    st = start(tmp_path, bundles, replay, start_product=2)  # plant IT names the starting product: it wins
    try:
        assert st.active_product.number == 2 and st.threshold == 0.7
    finally:
        st.stop()


def test_dashboard_bundle_swap_and_threshold_apply_to_the_active_product_only(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay, start_product=2)
    swapped = product_copy(bundles[0], tmp_path / "nut-v2", "nut v2")
    try:
        bolt_before = st.products[0]
        assert st.activate_bundle(swapped, who="qe")["path"] == str(swapped)
        st.set_threshold(0.65, who="qe")
        bolt, nut = st.products
        assert bolt == bolt_before and nut.threshold == 0.65 and nut.bundle_id != bolt.bundle_id
        st.switch_product(1, who="qe")
        with pytest.raises(KenpinError, match=r"product 1 \(bolt\): no previous bundle to roll back to"):
            st.rollback_bundle("qe")
        st.switch_product(2, who="qe")
        assert st.rollback_bundle("qe")["path"] == str(bundles[1])
        assert st.undo_threshold("qe") == 0.6
    finally:
        st.stop()


def test_a_product_whose_bundle_does_not_load_stops_the_start_naming_it(bundles, replay, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundles[1], broken)
    (broken / "bank_int8-w8.npy").write_bytes(b"tampered")
    cfg = station_config(tmp_path, bundles[0], replay, mode="software",
                         extra=f"products:\n  - {{number: 1, name: bolt, bundle: {bundles[0]}}}\n"
                               f"  - {{number: 5, name: washer, bundle: {broken}}}\n")
    with pytest.raises(KenpinError, match=rf"product 5 \(washer\) cannot start with its bundle {broken}: .*SHA-256 does not match"):
        Station(cfg).start()


def test_a_station_without_products_is_product_zero_named_after_it(tiny_bundle, replay, tmp_path):
    st = Station(station_config(tmp_path, tiny_bundle, replay, mode="software"))
    st.start()
    try:
        (only,) = st.products
        assert (only.number, only.name) == (0, "test-line") and st.active_product == only
        sub = st.subscribe()
        st.trigger()
        assert sub.get(timeout=10).product == 0
        with pytest.raises(KenpinError, match=r"product 1: no such product on this station; it knows 0 \(test-line\)"):
            st.switch_product(1, who="plc")
        with pytest.raises(KenpinError, match="trigger source 'plc'"):
            st.trigger("plc")
    finally:
        st.stop()


def test_overrides_from_before_products_still_restore_the_one_products_threshold(tmp_path):
    import json

    from device.station.overrides import OverrideFile

    f = OverrideFile(tmp_path)
    f.path.write_text(json.dumps({"config_bundle": "/b", "config_threshold": 0.5, "bundle": "/b2", "threshold": 0.7}))
    kept = f.load({0: ("/b", 0.5)}, 0)
    assert (kept.products[0].bundle, kept.products[0].threshold, kept.product) == ("/b2", 0.7, None)
    assert f.load({0: ("/b", 0.55)}, 0).products == {}  # the config's threshold was edited since: it wins


def test_feedback_of_each_product_is_kept_apart_for_its_own_retraining(bundles, replay, tmp_path):
    st = start(tmp_path, bundles, replay, start_product=2)
    try:
        sub = st.subscribe()
        st.trigger()
        rec = sub.get(timeout=10)
        saved = st.mark_wrong(rec.id, "defect", who="qe")
    finally:
        st.stop()
    assert saved == tmp_path / "data" / "feedback" / "product-2" / "train" / "defect" / f"{rec.id:08d}.jpg"
    assert (tmp_path / "data" / "feedback" / "product-2" / "labels.csv").is_file()
