"""Bounded requests and safe response headers, as plain ASGI middleware (no per-request threads)."""
from __future__ import annotations

import json
from typing import Any, Callable

UPLOAD_PATHS = ("/api/bundle",)  # the only routes that take a large body

# Every asset is served from here: a page that tried a CDN would be refused by the browser.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class BodyLimit:
    """413 for a body over the limit, 411 for a body of undeclared length.

    Browsers always send Content-Length, and uvicorn refuses a body longer than declared, so
    checking the header up front bounds every body before a byte of it is read.
    """

    def __init__(self, app: Callable, max_body: int, max_upload: int) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_upload if scope["path"] in UPLOAD_PATHS else self.max_body
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" in headers:
            return await _refuse(send, 411, "send the request with a Content-Length header")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            if declared.isdigit() and int(declared) <= DRAIN_MAX:
                await _drain(receive)
            return await _refuse(send, 413, f"request body over the limit of {limit} bytes")
        await self.app(scope, receive, send)


# A refused body that is still arriving makes the server's close a TCP reset, and the client may
# then lose the 413 itself ("connection reset"). Bodies up to this size are read and dropped
# first, so the client gets the answer; larger ones are answered at once and the connection closed.
DRAIN_MAX = 4 * 2**20


async def _drain(receive: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _refuse(send: Callable, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds the headers above to every response."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, with_headers)
