"""Tokens: stored only as PBKDF2 hashes, compared in constant time, never logged.

Actions carry the engineer's token in ``Authorization: Bearer …`` (so a cross-site form cannot
forge one); a viewer behind ``view: token`` logs in once and gets a random session cookie, so the
slow hash is not recomputed for every frame the page polls.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from device.errors import KenpinError

ALGO = "pbkdf2_sha256"
ITERATIONS = 200_000  # ~0.1 s here, well under a second on a Pi 4: fine for rare actions
SESSION_COOKIE = "kenpin_session"


def hash_token(token: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITER$SALT$HASH`` for the config (what ``kenpin hash-token`` prints)."""
    if len(token) < 8:
        raise KenpinError("the token is shorter than 8 characters; choose a longer one")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
    return f"{ALGO}${iterations}${salt.hex()}${digest.hex()}"


def check_hash_format(stored: str, key: str) -> None:
    """Refuse a config value that is not a hash ``hash_token`` made (e.g. a plain token pasted in)."""
    parts = stored.split("$") if isinstance(stored, str) else []
    try:
        ok = len(parts) == 4 and parts[0] == ALGO and int(parts[1]) >= 1000
        bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise KenpinError(f"{key} is not a token hash; put the output of `kenpin hash-token` there "
                          f"(the form is {ALGO}$ITERATIONS$SALT$HASH), never the token itself")


def verify_token(token: str | None, stored: str | None) -> bool:
    """True when ``token`` matches the stored hash; constant-time comparison of the digests."""
    if not token or not stored:
        return False
    _, iterations, salt, expected = stored.split("$")
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(digest.hex(), expected)


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer …`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Sessions:
    """Random viewer session ids held in memory with an expiry (a restart logs viewers out)."""

    def __init__(self, lifetime_s: float, limit: int = 1000) -> None:
        self._lifetime = lifetime_s
        self._limit = limit
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def new(self) -> str:
        """A fresh session id; the oldest are dropped beyond ``limit`` (bounded memory)."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            while len(self._expiry) >= self._limit:
                self._expiry.pop(next(iter(self._expiry)))
            self._expiry[sid] = now + self._lifetime
        return sid

    def valid(self, sid: str | None) -> bool:
        """True for a known, unexpired session id."""
        if not sid:
            return False
        with self._lock:
            return self._expiry.get(sid, 0.0) > time.time()


class FailureLimiter:
    """Slows token guessing: after ``limit`` wrong tokens within ``window_s``, refuse for a while."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self._limit, self._window = limit, window_s
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def blocked(self) -> bool:
        with self._lock:
            now = time.time()
            self._failures = [t for t in self._failures if now - t < self._window]
            return len(self._failures) >= self._limit

    def fail(self) -> None:
        with self._lock:
            self._failures.append(time.time())
