"""Live view: the camera's latest frame (polled JPEG) and verdicts as they happen (SSE)."""
from __future__ import annotations

import asyncio
import time
import zlib

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from device.dashboard.access import require_view
from device.dashboard.events import _as_dict

router = APIRouter(prefix="/api", tags=["live"], dependencies=[Depends(require_view)])

PING_S = 15.0  # keeps proxies and the browser from closing an idle stream


@router.get("/live.jpg", summary="The camera's latest frame (JPEG)",
            responses={200: {"content": {"image/jpeg": {}}}, 204: {"description": "no frame yet"},
                       304: {"description": "unchanged since the ETag sent in If-None-Match"}})
async def live_frame(request: Request) -> Response:
    """The latest frame; ``ETag`` lets a page polling faster than the camera skip the bytes.

    Async: twenty pages polling several times a second should not each cost a thread hop. The
    station caches the JPEG and re-encodes it at most ``pipeline.live_jpeg_hz`` times a second,
    so the rare encode on the event loop is short."""
    latest = request.app.state.station.latest_frame()
    if latest is None:  # 204, not an error: a page opened before the first frame stays quiet
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    jpeg, record = latest
    etag = f'"{zlib.crc32(jpeg):08x}"'
    headers = {"ETag": etag, "Cache-Control": "no-store"}
    if record is not None and record.id is not None:
        headers["X-Verdict-Id"] = str(record.id)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@router.get("/live", summary="The last verdict shown with the live frame")
def live_state(request: Request) -> dict:
    """The verdict belonging to the latest frame (None before the first one) and the threshold."""
    station = request.app.state.station
    latest = station.latest_frame()
    record = latest[1] if latest else None
    return {"verdict": _as_dict(record) if record is not None else None,
            "threshold": station.threshold, "server_time": time.time()}


@router.get("/events", summary="Verdicts as they happen (Server-Sent Events, event 'verdict')",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request) -> StreamingResponse:
    """Each verdict as ``event: verdict`` with the record's JSON; a comment line every 15 s."""
    hub = request.app.state.hub
    q = hub.connect()

    async def stream():
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    async with asyncio.timeout(PING_S):  # no extra task per event, unlike wait_for
                        chunk, decided = await q.get()
                    while not q.empty():  # whatever piled up goes out in one write
                        chunk += q.get_nowait()[0]
                    hub.took(decided)
                except TimeoutError:
                    if await request.is_disconnected():
                        break
                    yield b": ping\n\n"
                    continue
                yield chunk
        finally:
            hub.disconnect(q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
