"""Dashboard settings: the ``dashboard:`` block of the station config, validated once here."""
from __future__ import annotations

from dataclasses import dataclass

from device.dashboard.auth import check_hash_format
from device.schema import need

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
        need(self.view in VIEW_MODES, "view", self.view, f"use one of {VIEW_MODES}")
        need(0 < self.port < 65536, "port", self.port, "use a TCP port between 1 and 65535")
        for key in ("token_hash", "viewer_token_hash"):
            value = getattr(self, key)
            if value is not None:
                check_hash_format(value, f"dashboard.{key}")
        need(self.view != "token" or bool(self.token_hash or self.viewer_token_hash), "view", self.view,
             "needs token_hash or viewer_token_hash set; make one with `kenpin hash-token`")
        for key in ("max_upload_mb", "max_body_kb", "live_fps", "session_hours"):
            need(getattr(self, key) > 0, key, getattr(self, key), "must be a positive number")
