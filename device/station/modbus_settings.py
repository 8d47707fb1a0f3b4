"""The ``modbus:`` section of the station config: the Modbus TCP server a PLC talks to.

Modbus has no authentication and no encryption: anyone who reaches the port can read, and with
``writes: true`` trigger inspections and switch products. ``allowed_clients`` and a separate PLC
network are the protection (README.md, "PLC: Modbus TCP").
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from device.schema import need


@dataclass(frozen=True)
class ModbusSettings:
    """The ``modbus:`` block of the station config (documented in configs/station.yaml)."""

    enabled: bool = True
    host: str = "0.0.0.0"  # every interface: the PLC is another machine
    port: int = 5020  # 502, the standard port, needs root (or CAP_NET_BIND_SERVICE)
    unit_id: int = 1  # requests for another unit id are answered with exception 0B
    allowed_clients: tuple[str, ...] = ()  # addresses or networks (192.168.10.0/24); empty: any client
    writes: bool = True  # false: read-only, every write refused with exception 01
    max_connections: int = 4
    result_timeout_s: float = 5.0  # a trigger without a verdict by then is answered result 4 (error)
    idle_timeout_s: float = 60.0  # a connection without a valid request for this long is closed; 0 = never

    def __post_init__(self) -> None:
        need(bool(self.host.strip()), "host", self.host, "must be an address to listen on, e.g. 0.0.0.0")
        need(0 < self.port < 65536, "port", self.port, "must be 1 to 65535 (502 needs root; 5020 does not)")
        need(1 <= self.unit_id <= 255, "unit_id", self.unit_id, "must be 1 to 255")
        for client in self.allowed_clients:
            need(_network(client) is not None, "allowed_clients", client,
                 "each must be an IP address or network, e.g. 192.168.10.5 or 192.168.10.0/24")
        need(1 <= self.max_connections <= 64, "max_connections", self.max_connections, "must be 1 to 64")
        need(0 < self.result_timeout_s <= 600, "result_timeout_s", self.result_timeout_s,
             "must be above 0 and at most 600 seconds")
        need(self.idle_timeout_s >= 0, "idle_timeout_s", self.idle_timeout_s, "must be 0 (never) or positive")

    def allows(self, address: str) -> bool:
        """True when a client at ``address`` may connect (any, when the allow-list is empty)."""
        if not self.allowed_clients:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
        return any(ip in net for net in map(_network, self.allowed_clients) if net is not None)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
