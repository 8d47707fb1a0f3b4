"""Fleet publishing against a real broker (Debian's mosquitto, started by the test on loopback)."""
from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device.errors import KenpinError
from device.station.config import parse_config
from device.station.mqtt import MqttSettings, start_publisher
from device.station.station import Station

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class Broker:
    """A mosquitto on a free loopback port with persistence, so it can be stopped and restarted."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # user: as root, mosquitto would switch to the "mosquitto" user and could not write its
        # persistence file here; the listener's session must survive the restart.
        self.conf.write_text(f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nlog_dest file {folder}/broker.log\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its sessions to the persistence file
            self.proc.wait(timeout=10)
            self.proc = None


class Listener:
    """A persistent-session subscriber (QoS 1): messages for it are kept by the broker across restarts."""

    def __init__(self, port: int, topic: str, name: str = "listener") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{port}", clean_session=False)
        self.client.on_message = lambda c, u, m: self._got(m)
        # The broker keeps the subscription in the session: subscribe only when it has none.
        self.client.on_connect = lambda c, u, f, rc, p: None if f.session_present else c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _got(self, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(m)

    def payloads(self, suffix: str) -> list[dict]:
        with self.lock:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, suffix: str, n: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len({p["id"] for p in self.payloads(suffix)}) < n:
            time.sleep(0.05)
        return self.payloads(suffix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("no mosquitto (Debian package mosquitto; ./scripts/setup.sh installs it as root)")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def station(tiny_line, tiny_bundle, tmp_path):
    cfg = parse_config(f"""
station: {{name: press-3, data_dir: {tmp_path / 'data'}}}
bundle: {{path: {tiny_bundle}, precision: fp32, threads: 1}}
camera: {{type: replay, replay: {{folder: {tiny_line / 'train' / 'good'}, fps: 0, loop: true}}}}
trigger: {{mode: software}}
""", "test.yaml")
    st = Station(cfg)
    st.start()
    yield st
    st.stop()


def inspect(station: Station, n: int, timeout: float = 60.0) -> list[int]:
    """Trigger n parts and wait until each is recorded; returns their verdict ids."""
    before = {r.id for r in station.store.query(limit=10_000)}
    for _ in range(n):
        station.trigger()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted({r.id for r in station.store.query(limit=10_000)} - before)
        if len(new) >= n:
            return new
        time.sleep(0.05)
    raise AssertionError(f"only {len(new)} of {n} parts recorded")


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_each_verdict_and_a_retained_plc_status_reach_the_broker(broker, station):
    listener = Listener(broker.port, "kenpin/press-3/#")
    pub = start_publisher(station, MqttSettings(port=broker.port, status_interval_s=0.3))
    try:
        ids = inspect(station, 6)
        got = listener.wait_for("/verdict", 6)
        assert sorted(p["id"] for p in got) == ids
        first = next(p for p in got if p["id"] == ids[0])
        assert first == station.store.get(ids[0]).to_dict()  # the full record, no image bytes
        time.sleep(0.5)  # a status after the last verdict
    finally:
        pub.stop()
        listener.close()
    # A client arriving later still gets the retained status, PLC-style.
    late = Listener(broker.port, "kenpin/press-3/status", name="late")
    try:
        deadline = time.monotonic() + 10
        while not late.payloads("/status") and time.monotonic() < deadline:
            time.sleep(0.05)
        status = late.payloads("/status")[-1]
        assert late.messages[-1].retain
        assert status["triggers"] == 6 and status["ok"] + status["ng"] + status["retakes"] == 6
        assert status["trigger_errors"] == 0 and status["processing_ms"]["max"] >= status["processing_ms"]["min"] > 0
    finally:
        late.close()


def test_verdicts_recorded_while_the_broker_is_down_arrive_after_it_returns(broker, station):
    listener = Listener(broker.port, "kenpin/press-3/verdict")
    pub = start_publisher(station, MqttSettings(port=broker.port, reconnect_max_s=1))
    try:
        early = inspect(station, 3)
        listener.wait_for("/verdict", 3)
        broker.stop()
        during = inspect(station, 10)  # the station keeps inspecting; the publisher buffers
        broker.start()
        got = listener.wait_for("/verdict", 13, timeout=60)
        assert {p["id"] for p in got} == set(early + during)
        assert pub.dropped == 0
    finally:
        pub.stop()
        listener.close()


def test_a_full_buffer_drops_the_oldest_and_counts_them(broker, station):
    listener = Listener(broker.port, "kenpin/press-3/verdict")
    pub = start_publisher(station, MqttSettings(port=broker.port, buffer=4, reconnect_max_s=1))
    try:
        inspect(station, 1)
        listener.wait_for("/verdict", 1)
        broker.stop()
        wait_until(lambda: not pub.connected)  # else paho might still take some before noticing
        during = inspect(station, 10)
        time.sleep(0.5)  # let the publisher take them all into its buffer
        assert pub.dropped == 6
        assert pub.status_payload()["mqtt"]["dropped"] == 6
        broker.start()
        got = listener.wait_for("/verdict", 5, timeout=60)
        assert {p["id"] for p in got} >= set(during[-4:])  # the newest four survive
        assert not {p["id"] for p in got} & set(during[:6])
    finally:
        pub.stop()
        listener.close()


def test_stop_sends_the_verdicts_still_waiting(broker, station):
    listener = Listener(broker.port, "kenpin/press-3/verdict")
    pub = start_publisher(station, MqttSettings(port=broker.port))
    try:
        wait_until(lambda: pub.connected)
        ids = inspect(station, 8)
    finally:
        pub.stop()  # at once: some are still in the subscription or the buffer
    try:
        assert {p["id"] for p in listener.wait_for("/verdict", 8)} == set(ids)
    finally:
        listener.close()


def mqtt_block(body: str) -> MqttSettings | None:
    """The ``mqtt:`` section of a station config file holding ``body``."""
    return parse_config("mqtt:\n" + body, "st.yaml").mqtt


def test_bad_mqtt_settings_are_named():
    with pytest.raises(KenpinError, match=r"st.yaml, line 2: mqtt\.hots: unknown key"):
        mqtt_block("  hots: x\n")
    with pytest.raises(KenpinError, match=r"line 3: mqtt\.port = 'a': expected a whole number"):
        mqtt_block("  host: broker\n  port: a\n")
    with pytest.raises(KenpinError, match=r"mqtt\.topic_prefix = 'a/#'"):
        mqtt_block("  topic_prefix: a/#\n")
    with pytest.raises(KenpinError, match=r"mqtt\.password_file"):
        mqtt_block("  password_file: /nonexistent/pw\n")
    assert mqtt_block("  status_interval_s: 5\n").status_interval_s == 5.0
    assert parse_config("station:\n  name: s\n").mqtt is None  # no section: no publishing


def test_documented_mqtt_block_is_valid_and_off():
    from device.station.config import load_config

    example = Path(__file__).resolve().parents[1] / "configs" / "station.yaml"
    settings = load_config(example).mqtt
    assert settings == MqttSettings(enabled=False)  # every other value shown is the default
    assert start_publisher(None, settings) is None
