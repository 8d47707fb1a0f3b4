"""History: recent verdicts with filters, a verdict's image and heat map, CSV export.

Image URLs carry only a verdict id; the file path comes from the store's own record, so no
path in a URL ever reaches the file system.
"""
from __future__ import annotations

import tempfile
import time
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse

from device.dashboard.access import require_view
from device.dashboard.events import _as_dict
from device.errors import KenpinError

router = APIRouter(prefix="/api", tags=["history"], dependencies=[Depends(require_view)])

MAX_ID = 2**62  # SQLite integers; larger ids cannot exist


@router.get("/verdicts", summary="Recent verdicts, newest first, with filters")
def list_verdicts(request: Request,
                  limit: int = Query(50, ge=1, le=500),
                  before_id: int | None = Query(None, ge=1, le=MAX_ID, description="page: ids below this one"),
                  verdict: Literal["ok", "defect", "retake"] | None = None,
                  since: float | None = Query(None, ge=0, le=1e11, description="unix seconds"),
                  until: float | None = Query(None, ge=0, le=1e11, description="unix seconds"),
                  min_score: float | None = Query(None, ge=-1e9, le=1e9),
                  max_score: float | None = Query(None, ge=-1e9, le=1e9)) -> dict:
    """A page of verdicts; ``next_before_id`` fetches the next (older) page."""
    rows = request.app.state.station.store.query(limit=limit, before_id=before_id, verdict=verdict, since=since,
                                                 until=until, min_score=min_score, max_score=max_score)
    items = [_as_dict(r) for r in rows]
    return {"items": items, "next_before_id": items[-1]["id"] if len(items) == limit else None}


@router.get("/verdicts.csv", summary="The verdict log for a time range, as CSV",
            response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}})
def export_csv(request: Request,
               since: float | None = Query(None, ge=0, le=1e11, description="unix seconds"),
               until: float | None = Query(None, ge=0, le=1e11, description="unix seconds")) -> StreamingResponse:
    """Spooled to a temporary file first, so a long log never sits in memory whole."""
    spool = tempfile.SpooledTemporaryFile(max_size=4 << 20, mode="w+", newline="", encoding="utf-8")
    request.app.state.station.store.export_csv(spool, since=since, until=until)
    spool.seek(0)

    def chunks():
        with spool:
            while block := spool.read(1 << 16):
                yield block

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{request.app.state.station.name}-verdicts-{stamp}.csv"
    return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'})


def _get(request: Request, verdict_id: int):
    record = request.app.state.station.store.get(verdict_id)
    if record is None:
        raise HTTPException(404, f"no verdict with id {verdict_id}")
    return record


VerdictId = PathParam(ge=1, le=MAX_ID, description="the verdict's id")


@router.get("/verdicts/{verdict_id}", summary="One verdict")
def get_verdict(request: Request, verdict_id: int = VerdictId) -> dict:
    """The verdict record; 404 when there is none with this id."""
    return _as_dict(_get(request, verdict_id))


@router.get("/verdicts/{verdict_id}/{kind}", summary="A verdict's frame or heat map image",
            response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
def verdict_image(request: Request, kind: Literal["image", "heatmap"], verdict_id: int = VerdictId) -> FileResponse:
    """The kept frame (``image``) or its anomaly heat map; 404 when it was not kept."""
    record = _get(request, verdict_id)
    ref = record.frame_ref if kind == "image" else record.heatmap_ref
    if not ref:
        raise HTTPException(404, f"verdict {verdict_id} has no {kind} kept (ok parts are sampled, "
                                 "and recording pauses when the disk is full)")
    try:
        path = request.app.state.station.store.image_path(ref)
    except KenpinError as e:
        raise HTTPException(404, str(e)) from None
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def _safe(name: str) -> str:
    """A file name fit for a Content-Disposition header (station names are free text)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
