"""Oversized requests get their 413 answer instead of a reset connection."""
from __future__ import annotations

import asyncio

from device.dashboard.limits import DRAIN_MAX, BodyLimit


def _call(declared: int, chunks: int) -> list[str]:
    """Events in order: each body chunk the server read, then the response status."""
    events: list[str] = []
    left = [chunks]

    async def app(scope, receive, send):  # never reached: the body is over the limit
        raise AssertionError("the app was called")

    async def receive():
        left[0] -= 1
        events.append("chunk")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": left[0] > 0}

    async def send(message):
        if message["type"] == "http.response.start":
            events.append(str(message["status"]))

    scope = {"type": "http", "path": "/api/threshold", "headers": [(b"content-length", str(declared).encode())]}
    asyncio.run(BodyLimit(app, max_body=16 * 1024, max_upload=2**20)(scope, receive, send))
    return events


def test_a_body_somewhat_over_the_limit_is_read_before_the_413():
    # Read to its end first: closing on unread data would reset the connection and lose the answer.
    assert _call(100 * 1024, chunks=100) == ["chunk"] * 100 + ["413"]


def test_a_huge_body_is_refused_without_reading_it():
    assert _call(DRAIN_MAX * 10, chunks=10**6) == ["413"]
