"""Products on the dashboard, against the REAL station with two products: the active one shown,
the switch behind the engineer's token (audited, an unknown number refused), statistics and
/metrics per product; and the same in a real headless Chromium where there is one."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.bench.products import product_copy
from device.dashboard import create_app
from tests.test_dashboard_support import TOKEN, engineer_settings, replay_folder, serve, station_yaml, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def station(tiny_line, tiny_bundle, tmp_path_factory):
    from device.station.config import parse_config
    from device.station.station import Station

    tmp = tmp_path_factory.mktemp("dash-products")
    nut = product_copy(tiny_bundle, tmp / "nut", "nut")
    text = station_yaml(tmp / "data", tiny_bundle, replay_folder(tiny_line, tmp / "replay"), mode="software") + f"""
products:
  - {{number: 1, name: bolt, bundle: "{tiny_bundle}"}}
  - {{number: 2, name: nut, bundle: "{nut}", threshold: 0.6}}
"""
    st = Station(parse_config(text, "test station config"))
    st.start()
    yield st
    st.stop()


@pytest.fixture(scope="module")
def client(station):
    with serve(create_app(station, engineer_settings())) as base, httpx.Client(base_url=base, timeout=10) as c:
        yield c


def inspect(client, station, n: int) -> None:
    ids = [client.post("/api/trigger", headers=AUTH).json()["trigger_id"] for _ in range(n)]
    wait_for(lambda: {v.trigger_id for v in station.store.query(limit=1000)} >= set(ids), timeout=20)


def test_switch_needs_the_token_is_audited_and_shows_on_the_station_page(client, station):
    st = client.get("/api/station").json()
    assert st["product"]["name"] == "bolt" and [p["name"] for p in st["products"]] == ["bolt", "nut"]
    assert client.post("/api/product", json={"number": 2}).status_code == 401
    assert station.active_product.number == 1
    r = client.post("/api/product", json={"number": 2}, headers=AUTH)
    assert r.status_code == 200 and r.json()["product"]["name"] == "nut" and station.active_product.number == 2
    audit = client.get("/api/audit").json()["items"][0]
    assert audit["event"] == "product_switch" and audit["who"].startswith("dashboard 127.0.0.1")
    st = client.get("/api/station").json()
    assert st["product"]["number"] == 2 and st["threshold"] == 0.6 and st["bundle"]["id"] == st["product"]["bundle_id"]


def test_an_unknown_product_is_a_400_naming_the_known_ones_and_nothing_changes(client, station):
    before = station.active_product
    r = client.post("/api/product", json={"number": 9}, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["detail"] == "product 9: no such product on this station; it knows 1 (bolt), 2 (nut)"
    assert client.post("/api/product", json={"number": "two"}, headers=AUTH).status_code == 422
    assert station.active_product == before


def test_statistics_and_metrics_per_product(client, station):
    client.post("/api/product", json={"number": 1}, headers=AUTH)
    inspect(client, station, 3)
    client.post("/api/product", json={"number": 2}, headers=AUTH)
    inspect(client, station, 2)
    recorded = {n: sum(1 for v in station.store.query(limit=1000) if v.product == n) for n in (1, 2)}
    stats = {p["product"]: p for p in client.get("/api/stats").json()["products"]}
    assert {n: stats[n]["total"] for n in (1, 2)} == recorded and stats[2]["name"] == "nut"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(client.get("/metrics").text) for s in fam.samples}
    for n in (1, 2):
        assert sum(samples[("kenpin_verdicts_total", (("product", str(n)), ("verdict", v)))]
                   for v in ("ok", "defect", "retake")) == recorded[n]
    assert samples[("kenpin_active_product", ())] == 2
    assert samples[("kenpin_product_info", (("bundle", station.products[1].bundle_id), ("name", "nut"), ("product", "2")))] == 1


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian package chromium)")
def test_the_page_shows_the_active_product_and_switches_it_with_the_token(client, station, tmp_path):
    from tests.test_browser import ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    client.post("/api/product", json={"number": 1}, headers=AUTH)
    inspect(client, station, 1)  # a part in the statistics' window
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(str(client.base_url) + "/#station")
        page.wait_for_function("() => document.querySelector('#product-name').textContent === 'product 1 · bolt'")
        page.wait_for_function("() => document.querySelectorAll('#product-rows tr').length === 2")
        page.click("#login-btn")
        page.fill("#login-form input[name=token]", TOKEN)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("body.engineer")
        page.select_option("#product-pick", "2")
        page.click("#product-form button[type=submit]")
        wait_for(lambda: station.active_product.number == 2, timeout=5)
        page.wait_for_function("() => document.querySelector('#product-now').textContent === '2 · nut'")
        page.wait_for_function("() => document.querySelector('#threshold-now').textContent === '0.600'")
        page.screenshot(path=str(tmp_path / "station.png"), full_page=True)
        page.click("button[data-tab=stats]")
        page.wait_for_function("() => document.querySelectorAll('#stats-product-rows tr').length >= 1")
        page.screenshot(path=str(tmp_path / "products.png"), full_page=True)
        browser.close()
    assert errors == []
