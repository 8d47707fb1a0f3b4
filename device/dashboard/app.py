"""The dashboard app: JSON API under /api, the single page under /, /healthz and /metrics."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from device.dashboard import actions, live, stats, station_page, verdicts
from device.dashboard.access import Access
from device.dashboard.auth import SESSION_COOKIE, bearer
from device.dashboard.events import VerdictHub
from device.dashboard.limits import BodyLimit, SecurityHeaders
from device.dashboard.settings import DashboardSettings
from device.errors import KenpinError
from device.version import kenpin_version

log = logging.getLogger("kenpin.dashboard")
STATIC = Path(__file__).parent / "static"


def create_app(station: Any, settings: DashboardSettings) -> FastAPI:
    """The dashboard for ``station`` (the Station facade); all state lives on ``app.state``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.hub.stop()

    # docs_url/redoc_url would load Swagger UI from a CDN; the OpenAPI JSON is served locally.
    app = FastAPI(title="kenpin station dashboard", version=kenpin_version(), docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.station = station
    app.state.access = Access(settings)
    app.state.hub = VerdictHub(station)
    app.add_middleware(BodyLimit, max_body=settings.max_body_kb * 1024,
                       max_upload=int(settings.max_upload_mb * 2**20))
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(KenpinError, _kenpin_error)
    for module in (live, verdicts, stats, station_page, actions):
        app.include_router(module.router)
    _add_plain_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_plain_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["service"], summary="200 while the record is healthy, 503 when degraded")
    def healthz(request: Request) -> JSONResponse:
        health = request.app.state.station.store.health()
        ok = not health.get("degraded")
        return JSONResponse({"ok": ok, "record": health}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics(request: Request) -> Response:
        from device.station.metrics import CONTENT_TYPE, exposition

        return Response(exposition(request.app.state.station), media_type=CONTENT_TYPE)

    @app.post("/api/session", tags=["access"], summary="Log in with a token; sets a session cookie for viewing")
    def session(request: Request, response: Response) -> dict:
        """The page calls this with the token the engineer (or viewer) typed; answers the role."""
        access: Access = request.app.state.access
        role = access.role_of(bearer(request.headers.get("authorization")))
        if role is None:
            raise HTTPException(401, "wrong or missing token", headers={"WWW-Authenticate": "Bearer"})
        response.set_cookie(SESSION_COOKIE, access.sessions.new(), httponly=True, samesite="strict",
                            max_age=int(access.settings.session_hours * 3600))
        return {"role": role}

    @app.get("/api/config", tags=["access"], summary="What the page needs before logging in")
    def page_config(request: Request) -> dict:
        s: DashboardSettings = request.app.state.access.settings
        return {"station": request.app.state.station.name, "view": s.view,
                "actions_enabled": bool(s.token_hash), "live_fps": s.live_fps,
                "max_upload_mb": s.max_upload_mb}


async def _kenpin_error(request: Request, exc: KenpinError) -> JSONResponse:
    """An expected failure (bad bundle, empty range, …): its one sentence, as a 400."""
    return JSONResponse({"detail": str(exc)}, status_code=400)
