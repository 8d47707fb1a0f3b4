"""One subscription to the station, fanned out to every page's Server-Sent Events stream.

A single thread reads the station's verdict queue and hands the events to the event loop in
small batches (every BATCH_S at most), already formatted and encoded once as SSE bytes: twenty open pages
cost one thread and one socket write per page per batch, not a write per verdict per page,
which matters when a fast line decides dozens of parts a second. A page that does not keep up
loses its oldest batches (counted), never the station's verdicts.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import queue
import threading
import time
from typing import Any

log = logging.getLogger("kenpin.dashboard")

# Added to the page's latency at most; the figure to keep is 1 s. Each batch costs one write per
# page: 20 pages at 45 verdicts/s took 2.55 % of a core with 0.1 s batches, 1.7 % with 0.25 s
# (kenpin bench dashboard cost, above its idle 1.0 %).
BATCH_S = 0.25


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
        self.dropped = 0  # batches a slow page missed
        # Seconds from the daemon's decision to the moment a page's stream takes the event for
        # writing (the oldest event of each batch, per page): the server's share of page latency.
        self.delays: collections.deque[float] = collections.deque(maxlen=10_000)

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
                    first = sub.get(timeout=0.5)
                except queue.Empty:
                    continue
                batch = [first]
                deadline = time.monotonic() + BATCH_S
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        batch.append(sub.get(timeout=left))
                    except queue.Empty:
                        break
                text = "".join(f"event: verdict\ndata: {json.dumps(_as_dict(r))}\n\n" for r in batch).encode()
                decided = min(r.time + r.latency_ms / 1000 for r in batch)
                try:
                    self._loop.call_soon_threadsafe(self._broadcast, (text, decided))
                except RuntimeError:  # the loop closed under us: the server is stopping
                    break
        finally:
            self._station.unsubscribe(sub)

    def _broadcast(self, text: tuple[bytes, float]) -> None:
        for q in self._clients:
            if q.full():
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(text)

    def connect(self) -> asyncio.Queue:
        """A queue of (SSE bytes, decision time) batches from now on (call from the event loop)."""
        self._ensure_started()
        q: asyncio.Queue = asyncio.Queue(maxsize=self._client_queue)
        self._clients.add(q)
        return q

    def took(self, decided: float) -> None:
        """A page's stream is writing an event the daemon decided at ``decided`` (unix s)."""
        self.delays.append(time.time() - decided)

    def delay_summary(self) -> dict[str, float | None]:
        """p50/p99/max of the recent decision → page-stream delays, in milliseconds."""
        d = sorted(self.delays)
        if not d:
            return {"n": 0, "p50": None, "p99": None, "max": None}
        pick = lambda q: round(d[min(len(d) - 1, int(q * len(d)))] * 1000, 1)  # noqa: E731
        return {"n": len(d), "p50": pick(0.5), "p99": pick(0.99), "max": round(d[-1] * 1000, 1)}

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
