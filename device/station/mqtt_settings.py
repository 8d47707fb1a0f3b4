"""The ``mqtt:`` section of the station config: where and how the station publishes its verdicts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device.schema import file_path, need


@dataclass(frozen=True)
class MqttSettings:
    """The ``mqtt:`` block of the station config (documented in configs/station.yaml)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "kenpin"
    client_id: str = ""  # "" → kenpin-<station name>
    username: str = ""
    # Both relative to the config file's folder (device.schema.file_path).
    password_file: str = file_path()  # a file holding the password, so the config itself carries no secret
    tls_ca_file: str = file_path()  # CA certificate: connect with TLS when set
    keepalive_s: int = 30
    status_interval_s: float = 10.0
    buffer: int = 10_000
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        p = self.topic_prefix
        need(bool(self.host.strip()), "host", self.host, "must name the broker")
        need(0 < self.port < 65536, "port", self.port, "must be 1 to 65535")
        need(bool(p) and not set(p) & set("+#") and not p.startswith("/") and not p.endswith("/"),
             "topic_prefix", p, "must be a topic without +, # or a leading/trailing /")
        need(self.keepalive_s >= 5, "keepalive_s", self.keepalive_s, "must be 5 or more")
        need(self.status_interval_s > 0, "status_interval_s", self.status_interval_s, "must be positive")
        need(self.buffer >= 1, "buffer", self.buffer, "must be 1 or more")
        need(self.reconnect_max_s >= 1, "reconnect_max_s", self.reconnect_max_s, "must be 1 or more")
        for key in ("password_file", "tls_ca_file"):
            value = getattr(self, key)
            need(not value or Path(value).is_file(), key, value, "must be an existing file")
