"""Fleet publishing over MQTT (paho-mqtt 2.x): every verdict, plus a retained PLC-style status.

Topics (``<prefix>/<station>/…``):
  verdict  each verdict as JSON (VerdictRecord.to_dict(), no image), QoS 1, in recording order
  status   retained, every ``status_interval_s``: triggers, OK, NG, retakes, trigger errors,
           processing time min/avg/max — what a PLC or SCADA reads from an inspection appliance
  online   retained "1" while connected; the broker publishes "0" (last will) if the station vanishes

While the broker is away, verdicts wait in a bounded buffer (the oldest are dropped and counted
when it is full) and are sent on reconnect. paho resends the few messages already handed to it
but not acknowledged, so delivery is at least once (a reconnect may repeat a verdict; its ``id``
tells repeats apart).
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from device.errors import KenpinError
from device.station.mqtt_settings import MqttSettings

log = logging.getLogger("kenpin.mqtt")
WINDOW = 50  # verdicts handed to paho at once; the rest stay in our own bounded buffer


class FleetPublisher:
    """Publishes a station's verdicts and status to one broker; ``stop()`` flushes and disconnects."""

    def __init__(self, station: Any, settings: MqttSettings) -> None:
        if set(station.name) & set("+#/"):
            raise KenpinError(f"station.name {station.name!r} cannot be an MQTT topic level; drop +, # and /")
        self.station, self.settings = station, settings
        base = f"{settings.topic_prefix}/{station.name}"
        self.topics = {k: f"{base}/{k}" for k in ("verdict", "status", "online")}
        self.dropped = 0  # verdicts lost because the buffer was full while the broker was away
        self.published = 0  # verdicts acknowledged by the broker
        self._pending: collections.deque[bytes] = collections.deque()
        self._inflight: list[mqtt.MQTTMessageInfo] = []  # handed to paho, not yet acknowledged
        self._cond = threading.Condition()
        self._connected = False
        self._stop = threading.Event()
        self._sub = station.subscribe(maxsize=max(1024, min(settings.buffer, 65536)))
        self._client = self._make_client()
        self._threads = [threading.Thread(target=self._collect, name="mqtt-collect", daemon=True),
                         threading.Thread(target=self._send, name="mqtt-send", daemon=True)]

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id or f"kenpin-{self.station.name}",
                        clean_session=False)  # the broker keeps our session across reconnects
        if s.username:
            pw = Path(s.password_file).read_text().strip() if s.password_file else None
            c.username_pw_set(s.username, pw)
        if s.tls_ca_file:
            c.tls_set(ca_certs=s.tls_ca_file)
        c.enable_logger(logging.getLogger("kenpin.mqtt.paho"))  # paho's own story, at DEBUG
        c.will_set(self.topics["online"], b"0", qos=1, retain=True)
        c.reconnect_delay_set(1, max(1, int(s.reconnect_max_s)))
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        return c

    def start(self) -> "FleetPublisher":
        """Connect in the background (retrying until the broker answers) and start publishing."""
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()
        for t in self._threads:
            t.start()
        log.info("mqtt: publishing to %s:%d under %s/%s", s.host, s.port, s.topic_prefix, self.station.name)
        return self

    @property
    def connected(self) -> bool:
        """True while the broker is connected."""
        return self._connected

    # -- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: broker %s refused the connection: %s", self.settings.host, reason_code)
            return
        log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        client.publish(self.topics["online"], b"1", qos=1, retain=True)
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._stop.is_set():
            log.warning("mqtt: lost the broker (%s); buffering verdicts", reason_code)
        with self._cond:
            self._connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._cond.notify_all()  # a window slot may have freed

    # -- our threads --------------------------------------------------------------------------
    def _collect(self) -> None:
        """Station subscription → bounded buffer (oldest dropped, counted)."""
        for rec in self._sub.follow(self._stop):
            self._buffer(json.dumps(rec.to_dict(), separators=(",", ":")).encode())

    def _buffer(self, payload: bytes) -> None:
        with self._cond:
            if len(self._pending) >= self.settings.buffer:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(payload)
            self._cond.notify_all()

    def _send(self) -> None:
        """Hand verdicts to paho while connected (a window at a time); publish status on schedule."""
        next_status = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                batch = self._take_window()
                if not batch:
                    self._cond.wait(timeout=0.2)
                    batch = self._take_window()
            for payload in batch:
                self._publish_verdict(payload)
            if self._connected and time.monotonic() >= next_status:
                self.publish_status()
                next_status = time.monotonic() + self.settings.status_interval_s

    def _prune_acked(self) -> None:
        still = [i for i in self._inflight if not i.is_published()]
        self.published += len(self._inflight) - len(still)
        self._inflight = still

    def _take_window(self) -> list[bytes]:
        self._prune_acked()
        if not self._connected:
            return []
        n = min(len(self._pending), WINDOW - len(self._inflight))
        return [self._pending.popleft() for _ in range(max(0, n))]

    def _publish_verdict(self, payload: bytes) -> None:
        # Whatever the return code, paho now holds the message (it is queued while disconnected
        # and resent after reconnecting); its queue is unbounded, and our window bounds it.
        info = self._client.publish(self.topics["verdict"], payload, qos=1)
        with self._cond:
            self._inflight.append(info)

    def status_payload(self) -> dict[str, Any]:
        """The PLC-style status: counters since start and processing time min/avg/max."""
        st = self.station.status()
        c, ms = st.get("counters", {}), st.get("processing_ms", {})
        with self._cond:
            buffered = len(self._pending) + len(self._inflight)
        return {"station": self.station.name, "time": time.time(), "running": st.get("running", True),
                "triggers": c.get("triggers", 0), "ok": c.get("ok", 0), "ng": c.get("defect", 0),
                "retakes": c.get("retake", 0), "trigger_errors": c.get("trigger_errors", 0),
                "processing_ms": {k: ms.get(k) for k in ("min", "avg", "max")},
                "record_degraded": bool(st.get("store", {}).get("degraded")),
                "mqtt": {"buffered": buffered, "dropped": self.dropped + self._sub.dropped}}

    def publish_status(self) -> None:
        """Publish the retained status now (it is also published every ``status_interval_s``)."""
        payload = json.dumps(self.status_payload(), separators=(",", ":")).encode()
        self._client.publish(self.topics["status"], payload, qos=1, retain=True)

    def stop(self, flush_s: float = 5.0) -> None:
        """Stop taking verdicts, send what is buffered (up to ``flush_s`` while connected), a last
        status and online=0, then disconnect. Call it after the station stopped, so the last
        parts' verdicts are among those sent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self.station.unsubscribe(self._sub)
        self._drain_subscription()
        deadline = time.monotonic() + flush_s
        while self._connected and time.monotonic() < deadline:
            with self._cond:
                batch = self._take_window()
                if not batch and not self._inflight:
                    break
            for payload in batch:
                self._publish_verdict(payload)
            with self._cond:
                self._cond.wait(timeout=0.05)
        if self._connected:
            self.publish_status()
            self._client.publish(self.topics["online"], b"0", qos=1, retain=True).wait_for_publish(timeout=2)
        left = len(self._pending) + len(self._inflight)
        if left:
            log.warning("mqtt: stopping with %d verdicts not delivered to %s", left, self.settings.host)
        # Network thread first: paho's loop logs a spurious error when it outlives disconnect().
        self._client.loop_stop()
        self._client.disconnect()

    def _drain_subscription(self) -> None:
        while True:
            try:
                rec = self._sub.get(timeout=0)
            except queue.Empty:
                return
            self._buffer(json.dumps(rec.to_dict(), separators=(",", ":")).encode())

def start_publisher(station: Any, settings: MqttSettings | None) -> FleetPublisher | None:
    """The publisher for a station's ``mqtt:`` block, started; None without one or when it says enabled: false."""
    if settings is None or not settings.enabled:
        return None
    return FleetPublisher(station, settings).start()
