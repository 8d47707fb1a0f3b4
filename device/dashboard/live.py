"""Live view: the camera's latest frame (an MJPEG stream, or one JPEG) and verdicts as they happen (SSE).

The page reads the MJPEG stream: a pushed frame costs the station one write per page, where a
polled one costs a whole HTTP request through the app (20 pages at 2 frames/s: 3.25 % of a core
polled, 0.55 % pushed; kenpin bench dashboard cost).
"""
from __future__ import annotations

import asyncio
import time
import zlib

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from device.dashboard.access import require_view
from device.dashboard.events import _as_dict

router = APIRouter(prefix="/api", tags=["live"], dependencies=[Depends(require_view)])

PING_S = 15.0  # keeps proxies and the browser from closing an idle stream
FRAME_WAIT_S = 1.0  # longest a live stream's wait for the next camera frame (a stopped camera: it waits again)
BOUNDARY = "kenpinframe"


@router.get("/live.jpg", summary="The camera's latest frame (JPEG)",
            responses={200: {"content": {"image/jpeg": {}}}, 204: {"description": "no frame yet"},
                       304: {"description": "unchanged since the ETag sent in If-None-Match"}})
async def live_frame(request: Request) -> Response:
    """The latest frame, one snapshot (the page reads ``/api/live.mjpg``); ``ETag`` lets a client
    polling faster than the camera skip the bytes.

    Async: clients polling several times a second should not each cost a thread hop. The
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


@router.get("/live.mjpg", summary="The camera's frames as they change (MJPEG, multipart/x-mixed-replace)",
            response_class=StreamingResponse,
            responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}}})
async def live_stream(request: Request) -> StreamingResponse:
    """Each new frame as one JPEG part (with ``Content-Length`` and ``X-Verdict-Id``), at most
    ``dashboard.live_fps`` a second; an ``<img>`` shows it as it is, and so do VLC and browsers.

    The stream waits for the camera's next frame (in a worker thread: the wait blocks) instead of
    asking on a timer, so a stopped camera costs no JPEG work and a new frame goes out at once."""
    station, period = request.app.state.station, 1.0 / request.app.state.access.settings.live_fps

    async def parts():
        last, seen = None, 0
        while True:
            newest = await run_in_threadpool(station.wait_frame, seen, FRAME_WAIT_S)
            if newest == seen:
                continue
            seen = newest
            latest = station.latest_frame()
            if latest is not None and latest[0] != last:  # only a changed frame is sent
                last, record = latest
                vid = record.id if record is not None and record.id is not None else ""
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(last)}\r\n"
                       f"X-Verdict-Id: {vid}\r\n\r\n").encode() + last + b"\r\n"
            await asyncio.sleep(period)

    return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


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
