"""Who may look and who may change: FastAPI dependencies over the settings' token hashes."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from device.dashboard.auth import SESSION_COOKIE, FailureLimiter, Sessions, bearer, verify_token
from device.dashboard.settings import DashboardSettings

log = logging.getLogger("kenpin.dashboard")


@dataclass
class Access:
    """The app's access state: settings, viewer sessions, and the wrong-token limiter."""

    settings: DashboardSettings
    sessions: Sessions = field(init=False)
    limiter: FailureLimiter = field(default_factory=FailureLimiter)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.session_hours * 3600)

    def role_of(self, token: str | None) -> str | None:
        """'engineer', 'viewer' or None for a presented token (wrong ones are counted)."""
        if token is None:
            return None
        if self.limiter.blocked():
            raise HTTPException(429, "too many wrong tokens; wait a minute and try again")
        if verify_token(token, self.settings.token_hash):
            return "engineer"
        if verify_token(token, self.settings.viewer_token_hash):
            return "viewer"
        self.limiter.fail()
        log.warning("dashboard: a wrong token was presented")  # never the token itself
        return None


def _access(request: Request) -> Access:
    return request.app.state.access


def who(request: Request) -> str:
    """The audit trail's 'who' for a dashboard action: the client's address."""
    host = request.client.host if request.client else "unknown"
    return f"dashboard {host}"


async def require_view(request: Request) -> None:
    """Open viewing passes; under ``view: token`` a session cookie or a valid Bearer token is needed.

    Async so the common case (open, or a session cookie) costs no thread hop on every live-frame
    poll; the slow hash of a presented token runs in the thread pool."""
    access = _access(request)
    if access.settings.view == "open" or access.sessions.valid(request.cookies.get(SESSION_COOKIE)):
        return
    token = bearer(request.headers.get("authorization"))
    if await run_in_threadpool(access.role_of, token) is None:
        raise HTTPException(401, "this station's dashboard needs a token to view; log in first",
                            headers={"WWW-Authenticate": "Bearer"})


def require_engineer(request: Request) -> None:
    """Every change needs the engineer's token in ``Authorization: Bearer …``."""
    access = _access(request)
    if not access.settings.token_hash:
        raise HTTPException(403, "actions are disabled: dashboard.token_hash is not set in the station "
                                 "config (make one with `kenpin hash-token`)")
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise HTTPException(401, "this action needs the quality engineer's token",
                            headers={"WWW-Authenticate": "Bearer"})
    if access.role_of(token) != "engineer":
        raise HTTPException(403, "the token is not the quality engineer's token")
