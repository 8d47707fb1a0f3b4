"""The operator dashboard against the REAL station (replay of the tiny line, the tiny bundle),
served by uvicorn on loopback: what an operator and a quality engineer would notice."""
from __future__ import annotations

import io
import json
import logging
import tarfile
import time

import cv2
import httpx
import numpy as np
import pytest

from device.dashboard import DashboardSettings, create_app
from device.dashboard.auth import hash_token, verify_token
from device.errors import KenpinError
from tests.test_dashboard_support import (TOKEN, VIEWER_TOKEN, engineer_settings, serve, start_station,
                                          wait_for)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def station(tiny_line, tiny_bundle, tmp_path_factory):
    st = start_station(tmp_path_factory.mktemp("dash-station"), tiny_line, tiny_bundle, rate_hz=8.0)
    wait_for(lambda: st.store.query(limit=1, verdict="defect"), timeout=30)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def client(station):
    with serve(create_app(station, engineer_settings())) as base, httpx.Client(base_url=base, timeout=10) as c:
        yield c


# ---- settings and tokens -------------------------------------------------------------------

def dashboard_block(body: str) -> DashboardSettings:
    """The ``dashboard:`` section of a station config file holding ``body``."""
    from device.station.config import parse_config

    return parse_config("station:\n  name: s\ndashboard:\n" + body, "st.yaml").dashboard


def test_settings_errors_name_the_file_line_and_key():
    with pytest.raises(KenpinError, match=r"st.yaml, line 4: dashboard.colour: unknown key"):
        dashboard_block("  colour: red\n")
    with pytest.raises(KenpinError, match=r"line 5: dashboard.port = 'eighty': expected a whole number"):
        dashboard_block("  host: 127.0.0.1\n  port: eighty\n")
    with pytest.raises(KenpinError, match="dashboard.view = 'public'"):
        dashboard_block("  view: public\n")
    with pytest.raises(KenpinError, match="token_hash.*kenpin hash-token"):
        dashboard_block("  token_hash: my-plain-password\n")
    with pytest.raises(KenpinError, match="dashboard.view = 'token': needs token_hash"):
        dashboard_block("  view: token\n")
    assert dashboard_block("").host == "0.0.0.0"  # LAN by default, as documented


def test_token_hash_round_trip():
    stored = hash_token("correct horse battery", iterations=2000)
    assert "correct horse" not in stored
    assert verify_token("correct horse battery", stored)
    assert not verify_token("correct horse batterY", stored)
    assert not verify_token(None, stored)
    assert hash_token("correct horse battery", iterations=2000) != stored  # salted
    with pytest.raises(KenpinError, match="shorter than 8"):
        hash_token("short")


# ---- the page and the live view ------------------------------------------------------------

def test_page_served_locally_with_csp(client):
    r = client.get("/")
    assert r.status_code == 200 and "<script src=\"/static/app.js\"" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("app.js", "charts.js", "style.css", "favicon.svg"):
        body = client.get(f"/static/{asset}").text
        # Nothing from the internet: the only absolute URL allowed is the SVG namespace.
        assert "https://" not in body and "http://" not in body.replace("http://www.w3.org/2000/svg", "")
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    assert "/api/verdicts" in client.get("/openapi.json").json()["paths"]


def test_live_frame_is_a_jpeg_and_unchanged_frames_cost_nothing(client):
    r = client.get("/api/live.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    frame = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert frame is not None and frame.shape[0] == 160
    again = client.get("/api/live.jpg", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code in (200, 304)
    if again.status_code == 304:
        assert again.content == b""
    state = client.get("/api/live").json()
    assert state["verdict"]["verdict"] in ("ok", "defect", "retake") and state["threshold"] == 0.5


def test_live_stream_pushes_whole_jpeg_frames_as_they_change(client):
    with client.stream("GET", "/api/live.mjpg", timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/x-mixed-replace")
        buf, frames = b"", []
        for chunk in r.iter_bytes():
            buf += chunk
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head = dict(line.split(": ", 1) for line in buf[:end].decode().split("\r\n") if ": " in line)
                size = int(head["Content-Length"])
                if len(buf) < end + 4 + size:
                    break
                frames.append(cv2.imdecode(np.frombuffer(buf[end + 4:end + 4 + size], np.uint8), cv2.IMREAD_COLOR))
                buf = buf[end + 4 + size:]
            if len(frames) >= 2:
                break
    # Two decodable frames of the camera's size: a running line changes the frame between pushes.
    assert all(f is not None and f.shape[0] == 160 for f in frames)


def test_verdicts_stream_as_they_happen(client, station):
    with client.stream("GET", "/api/events", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                break
    assert station.store.get(event["id"]) is not None  # only recorded verdicts are announced
    decided = event["time"] + event["latency_ms"] / 1000
    assert time.time() - decided < 1.0


# ---- history -------------------------------------------------------------------------------

def test_history_filters_and_reject_images(client):
    page = client.get("/api/verdicts", params={"verdict": "defect", "limit": 3}).json()
    assert page["items"] and all(v["verdict"] == "defect" for v in page["items"])
    ids = [v["id"] for v in page["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    older = client.get("/api/verdicts", params={"verdict": "defect", "limit": 3, "before_id": ids[-1]}).json()
    assert all(v["id"] < ids[-1] for v in older["items"])
    high = client.get("/api/verdicts", params={"min_score": 0.9}).json()["items"]
    assert all(v["score"] >= 0.9 for v in high)
    reject = page["items"][0]
    for kind in ("image", "heatmap"):
        r = client.get(f"/api/verdicts/{reject['id']}/{kind}")
        assert r.status_code == 200
        assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR) is not None
    assert client.get("/api/verdicts/999999999").status_code == 404
    assert client.get("/api/verdicts", params={"verdict": "maybe"}).status_code == 422


@pytest.mark.parametrize("path", ["/api/verdicts/..%2F..%2Fverdicts.sqlite3/image", "/api/verdicts/1/..%2F..%2Fetc",
                                  "/static/..%2F..%2Fapp.py", "/static/%2e%2e/app.py",
                                  "/api/verdicts/1/image/../../../../etc/passwd"])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert b"SQLite format" not in r.content and b"root:" not in r.content and b"create_app" not in r.content


def test_csv_export_for_a_time_range(client, station):
    since, until = station.started_at, time.time()

    def in_range() -> set[str]:
        return {str(v.id) for v in station.store.query(limit=10_000, since=since, until=until)}

    # The replay may still be committing verdicts stamped before `until`: bracket the export.
    before = in_range()
    r = client.get("/api/verdicts.csv", params={"since": since, "until": until})
    after = in_range()
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = r.text.strip().splitlines()
    assert rows[0].startswith("id,time,time_utc,station")
    ids = {row.split(",", 1)[0] for row in rows[1:]}
    assert len(ids) == len(rows) - 1 and before <= ids <= after and before


# ---- statistics and station ----------------------------------------------------------------

def test_stats_trend_and_station_page(client, station):
    s = client.get("/api/stats", params={"bucket_s": 3600}).json()
    assert s["counts"]["total"] >= 1 and s["threshold"] == station.threshold
    assert len(s["histogram"]["edges"]) == len(s["histogram"]["counts"]["ok"]) + 1
    assert client.get("/api/trend").json()["buckets"][0]["count"] >= 1
    # an empty range is a sentence, not a crash
    bad = client.get("/api/stats", params={"since": 100, "until": 50})
    assert bad.status_code == 400 and "empty" in bad.json()["detail"]
    st = client.get("/api/station").json()
    assert st["bundle"]["precision"] in ("int8-w8", "int8-w7", "fp32") and st["bundle"]["verified_on_this_cpu"] and st["uptime_s"] >= 0 and st["version"]
    assert st["dashboard"]["actions_enabled"] is True
    assert any(a["event"] == "start" for a in client.get("/api/audit").json()["items"])
    assert client.get("/healthz").json()["ok"] is True


# ---- actions behind the token --------------------------------------------------------------

def test_threshold_needs_the_token_and_is_audited_and_undoable(client, station, caplog):
    caplog.set_level(logging.DEBUG)
    assert client.post("/api/threshold", json={"threshold": 0.7}).status_code == 401
    wrong = client.post("/api/threshold", json={"threshold": 0.7}, headers={"Authorization": "Bearer nope-nope"})
    assert wrong.status_code == 403 and station.threshold == 0.5
    r = client.post("/api/threshold", json={"threshold": 0.7}, headers=AUTH)
    assert r.status_code == 200 and r.json()["threshold"] == 0.7 == station.threshold
    audit = client.get("/api/audit").json()["items"][0]
    assert audit["event"] == "threshold" and audit["detail"] == {"from": 0.5, "to": 0.7, "product": 0}
    assert audit["who"].startswith("dashboard 127.0.0.1")
    assert client.post("/api/threshold/undo", headers=AUTH).json()["threshold"] == 0.5 == station.threshold
    out_of_range = client.post("/api/threshold", json={"threshold": 5}, headers=AUTH)
    assert out_of_range.status_code in (400, 422) and station.threshold == 0.5
    assert TOKEN not in caplog.text and "nope-nope" not in caplog.text  # tokens are never logged


def test_software_trigger_gets_a_verdict(client, station):
    tid = client.post("/api/trigger", headers=AUTH).json()["trigger_id"]
    found = wait_for(lambda: [v for v in station.store.query(limit=50) if v.trigger_id == tid], timeout=10)
    assert len(found) == 1 and found[0].trigger_source == "software"


def test_mark_wrong_keeps_the_image_as_feedback(client, station):
    reject = client.get("/api/verdicts", params={"verdict": "defect", "limit": 1}).json()["items"][0]
    assert client.post(f"/api/verdicts/{reject['id']}/mark", json={"correct": "good"}).status_code == 401
    r = client.post(f"/api/verdicts/{reject['id']}/mark", json={"correct": "good"}, headers=AUTH)
    assert r.status_code == 200
    saved = station.config.station.data_dir / "feedback" / "train" / "good"
    assert any(saved.iterdir())
    assert client.post("/api/verdicts/999999/mark", json={"correct": "good"}, headers=AUTH).status_code == 404
    assert client.post(f"/api/verdicts/{reject['id']}/mark", json={"correct": "meh"}, headers=AUTH).status_code == 422


def _tar(folder, tamper: bool = False, evil: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.iterdir()):
            data = p.read_bytes()
            if tamper and p.suffix == ".npy":
                data = data[:-8] + b"\0" * 8
            info = tarfile.TarInfo(f"bundle/{p.name}" if not evil else f"../../{p.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bundle_upload_is_verified_before_activation(client, station, tiny_bundle):
    before = station.status()["bundle"]["id"]
    files = {"file": ("bundle.tar.gz", _tar(tiny_bundle), "application/gzip")}
    assert client.post("/api/bundle", files=files).status_code == 401
    # Activation runs the station's self-check on every variant: tens of seconds under emulation.
    r = client.post("/api/bundle", files=files, headers=AUTH, timeout=180)
    assert r.status_code == 200, r.text
    assert station.status()["previous_bundle"] == before
    events = [a["event"] for a in client.get("/api/audit").json()["items"]]
    assert events[0] == "bundle_activated"

    tampered = client.post("/api/bundle", files={"file": ("b.tar.gz", _tar(tiny_bundle, tamper=True))}, headers=AUTH)
    assert tampered.status_code == 400 and "bank" in tampered.json()["detail"].lower()
    evil = client.post("/api/bundle", files={"file": ("b.tar.gz", _tar(tiny_bundle, evil=True))}, headers=AUTH)
    assert evil.status_code == 400
    junk = client.post("/api/bundle", files={"file": ("b.zip", b"not an archive at all")}, headers=AUTH)
    assert junk.status_code == 400 and "neither" in junk.json()["detail"]
    assert client.post("/api/bundle/rollback", headers=AUTH, timeout=180).status_code == 200


def test_request_sizes_are_bounded(client, station):
    big = b'{"threshold": 0.6, "pad": "' + b"x" * 100_000 + b'"}'
    r = client.post("/api/threshold", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and station.threshold == 0.5


def test_upload_limit(station):
    app = create_app(station, engineer_settings(max_upload_mb=0.01))
    with serve(app) as base:
        r = httpx.post(f"{base}/api/bundle", files={"file": ("b.tar.gz", b"\0" * 20_000)}, headers=AUTH)
    assert r.status_code == 413


def test_actions_disabled_without_a_token_hash(station):
    with serve(create_app(station, DashboardSettings(host="127.0.0.1"))) as base:
        r = httpx.post(f"{base}/api/threshold", json={"threshold": 0.6}, headers=AUTH)
        assert r.status_code == 403 and "token_hash" in r.json()["detail"]
        assert httpx.get(f"{base}/api/verdicts").status_code == 200  # viewing stays open


def test_token_protected_viewing(station):
    settings = engineer_settings(view="token", viewer_token_hash=hash_token(VIEWER_TOKEN, iterations=2000))
    with serve(create_app(station, settings)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/api/verdicts").status_code == 401
        assert c.get("/api/live.jpg").status_code == 401
        assert c.get("/api/live.mjpg").status_code == 401  # the stream too
        assert c.get("/healthz").status_code == 200  # monitoring stays reachable
        assert c.post("/api/session", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        r = c.post("/api/session", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        assert r.json() == {"role": "viewer"} and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/api/verdicts").status_code == 200  # the session cookie now lets it look …
        refused = c.post("/api/threshold", json={"threshold": 0.6}, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        assert refused.status_code == 403 and station.threshold == 0.5  # … but not change


def test_metrics_and_hash_token_cli(client, capsys, monkeypatch):
    r = client.get("/metrics")
    assert r.status_code == 200 and "text/plain" in r.headers["content-type"]
    assert "# TYPE" in r.text
    from kenpin.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-token\n"))
    assert main(["hash-token", "--stdin"]) == 0
    stored = capsys.readouterr().out.strip()
    assert verify_token("a-long-enough-token", stored) and "a-long-enough-token" not in stored
    assert dashboard_block(f"  token_hash: '{stored}'\n").token_hash == stored  # the config accepts what it prints


def test_example_config_dashboard_block_is_valid():
    from pathlib import Path

    from device.station.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "station.yaml"
    settings = load_config(path).dashboard
    assert settings.host == "0.0.0.0" and settings.view == "open" and settings.token_hash is None
