"""One subscription to the station, fanned out to every page's Server-Sent Events stream.

A single thread reads the station's verdict queue and hands each record to the event loop, so
twenty open pages cost one thread and twenty small asyncio queues, not twenty blocked threads.
A page that does not keep up loses its oldest events (counted), never the station's.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from typing import Any

log = logging.getLogger("kenpin.dashboard")


class VerdictHub:
    """Fan-out of the station's verdicts to asyncio queues, one per connected page."""

    def __init__(self, station: Any, client_queue: int = 64) -> None:
        self._station = station
        self._client_queue = client_queue
        self._clients: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.dropped = 0  # events a slow page missed

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._loop = asyncio.get_running_loop()
            sub = self._station.subscribe()
            self._thread = threading.Thread(target=self._pump, args=(sub,), name="dashboard-events", daemon=True)
            self._thread.start()

    def _pump(self, sub: Any) -> None:
        try:
            while not self._stop.is_set():
                try:
                    record = sub.get(timeout=0.5)
                except queue.Empty:
                    continue
                payload = json.dumps(_as_dict(record))
                try:
                    self._loop.call_soon_threadsafe(self._broadcast, payload)
                except RuntimeError:  # the loop closed under us: the server is stopping
                    break
        finally:
            self._station.unsubscribe(sub)

    def _broadcast(self, payload: str) -> None:
        for q in self._clients:
            if q.full():
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(payload)

    def connect(self) -> asyncio.Queue:
        """A queue that receives every verdict's JSON from now on (call from the event loop)."""
        self._ensure_started()
        q: asyncio.Queue = asyncio.Queue(maxsize=self._client_queue)
        self._clients.add(q)
        return q

    def disconnect(self, q: asyncio.Queue) -> None:
        self._clients.discard(q)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def stop(self) -> None:
        """End the pump thread (its subscription is returned to the station)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def _as_dict(record: Any) -> dict[str, Any]:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)
