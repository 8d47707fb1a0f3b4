"""Keeps a misbehaving OPC UA client from flooding the station's log.

asyncua logs every refused or malformed request (an ERROR line, sometimes a traceback); a client
sending thousands of them would fill the journal and spend the CPU the inspection needs. While
the server runs, its loggers let ``burst`` records through per window and count the rest, and a
summary line says how many were held back.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("kenpin.opcua.flood")  # a child logger: the filter below never holds its lines back


class FloodFilter(logging.Filter):
    """Lets ``burst`` records through per ``window_s`` seconds; counts the others and reports them."""

    def __init__(self, burst: int = 20, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._passed = self._held = 0
        self.held_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                held, self._start, self._passed, self._held = self._held, now, 0, 0
                if held:
                    log.warning("opcua: %d more log lines from the OPC UA server held back in the last %.0f s "
                                "(a client sending bad requests?)", held, self.window_s)
            if self._passed < self.burst:
                self._passed += 1
                return True
            self._held += 1
            self.held_total += 1
            return False


class QuietLogs:
    """Installs a FloodFilter on asyncua's loggers and ours while a server runs; ``remove()`` undoes it.

    Filters apply to the logger they sit on, not to its children, hence one per asyncua module
    logger. asyncua's per-request INFO lines are raised to WARNING unless a level was set for it.
    """

    def __init__(self, burst: int = 20, window_s: float = 60.0) -> None:
        self.filter = FloodFilter(burst, window_s)
        names = [n for n in logging.root.manager.loggerDict if n.startswith("asyncua")] + ["kenpin.opcua"]
        self._loggers = [logging.getLogger(n) for n in names]
        for lg in self._loggers:
            lg.addFilter(self.filter)
        self._root = logging.getLogger("asyncua")
        self._level = self._root.level
        if self._level == logging.NOTSET:
            self._root.setLevel(logging.WARNING)

    def remove(self) -> None:
        for lg in self._loggers:
            lg.removeFilter(self.filter)
        self._root.setLevel(self._level)
