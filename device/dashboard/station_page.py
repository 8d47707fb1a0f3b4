"""Station page: bundle manifest, config summary, version, uptime, health; the audit trail."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from device.dashboard.access import require_view

router = APIRouter(prefix="/api", tags=["station"], dependencies=[Depends(require_view)])


@router.get("/station", summary="Bundle, config summary, version, uptime, camera, counters, health")
def station_status(request: Request) -> dict:
    """The station's own status, plus how many pages follow it live."""
    station = request.app.state.station
    out = dict(station.status())
    out["dashboard"] = {"live_clients": request.app.state.hub.clients,
                        "events_dropped": request.app.state.hub.dropped,
                        "event_delay_ms": request.app.state.hub.delay_summary(),
                        "view": request.app.state.access.settings.view,
                        "actions_enabled": bool(request.app.state.access.settings.token_hash),
                        "live_fps": request.app.state.access.settings.live_fps}
    return out


@router.get("/audit", summary="The audit trail (threshold and bundle changes, feedback), newest first")
def audit(request: Request, limit: int = Query(100, ge=1, le=1000)) -> dict:
    """Append-only: what changed, when, by whom."""
    return {"items": request.app.state.station.store.audit_log(limit)}
