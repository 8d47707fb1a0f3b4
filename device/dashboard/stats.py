"""Statistics: counts and yield per hour or shift and per product, score histogram, score trend (drift)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query, Request

from device.dashboard.access import require_view

router = APIRouter(prefix="/api", tags=["statistics"], dependencies=[Depends(require_view)])

DAY_S = 86400.0


def _window(since: float | None, until: float | None) -> tuple[float, float]:
    until = time.time() if until is None else until
    return (until - DAY_S if since is None else since), until


@router.get("/stats", summary="Counts and yield per bucket and per product, score histogram, latency")
def stats(request: Request,
          since: float | None = Query(None, ge=0, le=1e11, description="unix seconds (default: a day ago)"),
          until: float | None = Query(None, ge=0, le=1e11, description="unix seconds (default: now)"),
          bucket_s: int = Query(3600, ge=60, le=7 * 86400, description="3600 per hour, 28800 per 8-h shift")) -> dict:
    """The store's statistics for the window, with the threshold in force (drawn on the histogram);
    each product's counts carry its name where the station still has that product."""
    station = request.app.state.station
    since, until = _window(since, until)
    out = dict(station.store.stats(since=since, until=until, bucket_s=bucket_s))
    names = {p.number: p.name for p in station.products}
    out["products"] = [{**row, "name": names.get(row["product"])} for row in out["products"]]
    out.update(since=since, until=until, bucket_s=bucket_s, threshold=station.threshold)
    return out


@router.get("/trend", summary="Mean and p95 score per bucket (drift)")
def trend(request: Request,
          since: float | None = Query(None, ge=0, le=1e11, description="unix seconds (default: a day ago)"),
          until: float | None = Query(None, ge=0, le=1e11, description="unix seconds (default: now)"),
          bucket_s: int = Query(3600, ge=60, le=7 * 86400)) -> dict:
    """Scores drifting up towards the threshold show a line that needs attention before it rejects."""
    station = request.app.state.station
    since, until = _window(since, until)
    return {"since": since, "until": until, "bucket_s": bucket_s, "threshold": station.threshold,
            "buckets": station.store.trend(since=since, until=until, bucket_s=bucket_s)}
