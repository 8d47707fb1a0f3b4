"""Dashboard settings: the ``dashboard:`` block of the station config, validated once here."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from device.dashboard.auth import check_hash_format
from device.errors import KenpinError

VIEW_MODES = ("open", "token")


@dataclass(frozen=True)
class DashboardSettings:
    """Where the dashboard listens and who may see and change what.

    ``token_hash`` guards every action that changes something (``kenpin hash-token`` makes it);
    without it the actions answer 403. ``view: token`` also asks for a token to look at anything,
    the engineer's or ``viewer_token_hash``.
    """

    enabled: bool = True
    host: str = "0.0.0.0"  # all interfaces: tablets on the plant LAN reach it
    port: int = 8080
    view: str = "open"
    token_hash: str | None = None
    viewer_token_hash: str | None = None
    max_upload_mb: float = 200.0
    max_body_kb: int = 64  # JSON bodies of actions and filters are tiny
    live_fps: float = 2.0  # live frames pushed per second per page, at most (one write per page per frame)
    session_hours: float = 12.0

    def __post_init__(self) -> None:
        where = "dashboard"
        if self.view not in VIEW_MODES:
            raise KenpinError(f"{where}.view is {self.view!r}; use one of {VIEW_MODES}")
        if not 0 < self.port < 65536:
            raise KenpinError(f"{where}.port is {self.port}; use a TCP port between 1 and 65535")
        for key in ("token_hash", "viewer_token_hash"):
            value = getattr(self, key)
            if value is not None:
                check_hash_format(value, f"{where}.{key}")
        if self.view == "token" and not (self.token_hash or self.viewer_token_hash):
            raise KenpinError(f"{where}.view is 'token' but neither {where}.token_hash nor "
                              f"{where}.viewer_token_hash is set; make one with `kenpin hash-token`")
        for key in ("max_upload_mb", "max_body_kb", "live_fps", "session_hours"):
            if not getattr(self, key) > 0:
                raise KenpinError(f"{where}.{key} is {getattr(self, key)}; it must be a positive number")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "station config") -> "DashboardSettings":
        """Settings from the config's ``dashboard:`` mapping; unknown keys and wrong types are named."""
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise KenpinError(f"{source}: unknown key dashboard.{unknown[0]}; known keys: {', '.join(known)}")
        for key, value in d.items():
            _check_type(key, value, known[key].type, source)
        return cls(**d)


def _check_type(key: str, value: Any, annotation: str, source: str) -> None:
    """Refuse a value of the wrong type with a sentence naming the key (YAML types are few)."""
    if value is None and "None" in annotation:
        return
    expected = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    base = annotation.split("|")[0].strip()
    ok = isinstance(value, expected[base]) and not (base != "bool" and isinstance(value, bool))
    if not ok:
        raise KenpinError(f"{source}: dashboard.{key} is {value!r}; it must be a {base}")
