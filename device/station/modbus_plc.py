"""What the PLC sees over Modbus: the register image and the handshake's rules, without the network.

:class:`PlcImage` holds every value of the register map and changes it in answer to three
things: the PLC writing coils (trigger, result_ack), the station recording a verdict, and a
periodic tick (running, counters, product, result time-outs). The server calls all of them on
its one event loop, so a request never sees a half-written answer; and within one answer the
result registers are written before ``result_ready`` rises.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from device.station.modbus_map import COILS, RESULT_OF_VERDICT, ErrorCode, Layout, Result, Table
from device.station.record import VerdictRecord

log = logging.getLogger("kenpin.modbus")

COUNTERS = {"part_count": ("ok", "defect", "retake"), "ok_count": ("ok",), "ng_count": ("defect",),
            "retake_count": ("retake",), "error_count": ("trigger_errors",)}


class NotReady(Exception):
    """A trigger raised while ready = 0: the write is refused (exception 06), nothing is applied."""


@dataclass
class HandshakeStats:
    """What the handshake did since start-up (for logs, the benchmark and tests)."""

    triggers: int = 0  # rising edges accepted
    not_ready: int = 0  # rising edges refused (ready = 0)
    refused: int = 0  # accepted edges the station's trigger queue refused (backlog full)
    timeouts: int = 0  # answered result 4 / error 2 after result_timeout_s
    late: int = 0  # Modbus verdicts that came after their trigger had timed out
    # trigger accepted → result_ready, ms, per answer
    cycle_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))


class PlcImage:
    """The register values and the handshake (trigger → busy → results → result_ready → ack)."""

    def __init__(self, layout: Layout, result_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.layout = layout
        self.result_timeout_s = result_timeout_s
        self.clock = clock
        self.values: dict[str, int] = {e.name: 0 for e in layout.entries}
        self.pending: int | None = None  # the trigger id the PLC waits for
        self.pending_since = 0.0
        self.stats = HandshakeStats()

    # -- what a request reads ----------------------------------------------------------------
    def words(self, table: Table) -> list[int]:
        """The table's values by address (bits as 0/1; 32-bit values as high word, low word)."""
        out = [0] * self.layout.size(table)
        for a, e in self.layout.at[table].items():
            v = self.values[e.name] & (0xFFFFFFFF if e.words == 2 else 0xFFFF)
            out[a] = (v >> 16 if a == e.address else v & 0xFFFF) if e.words == 2 else v
        return out

    # -- the PLC writes ----------------------------------------------------------------------
    def write_coils(self, address: int, bits: list[bool], trigger: Callable[[], int | None]) -> None:
        """Apply a coil write: an acknowledgement first, then a trigger edge (which calls ``trigger``:
        the station's trigger id, or None when its queue refused it). Raises NotReady, applying
        nothing, for a trigger edge while ready = 0."""
        coils = self.layout.at[COILS]
        new = {coils[a].name: int(bool(b)) for a, b in enumerate(bits, address) if a in coils}
        trigger_edge = new.get("trigger", 0) and not self.values["trigger"]
        ack_edge = new.get("result_ack", 0) and not self.values["result_ack"]
        if trigger_edge and not self._ready(acked=bool(ack_edge)):
            self.stats.not_ready += 1
            self._error(ErrorCode.NOT_READY)
            raise NotReady
        self.values.update(new)
        if ack_edge:
            self.values["result_ready"] = 0
        if trigger_edge:
            self._start(trigger())
        self._flags()

    def _ready(self, acked: bool = False) -> bool:
        v = self.values
        return bool(v["running"]) and not v["busy"] and (acked or not v["result_ready"])

    def _start(self, trigger_id: int | None) -> None:
        self.stats.triggers += 1
        self.values["error_code"] = ErrorCode.NONE  # a new cycle: errors are per trigger
        self.values["busy"] = 1
        self.pending, self.pending_since = trigger_id, self.clock()
        if trigger_id is None:
            self.stats.refused += 1
            self._answer(Result.ERROR, error=ErrorCode.TRIGGER_REFUSED)

    # -- the station tells -------------------------------------------------------------------
    def verdict(self, rec: VerdictRecord, counts: dict[str, int]) -> bool:
        """A recorded Modbus verdict: the answer when it is the awaited trigger's. True if it was."""
        self.counters(counts)
        if self.pending is None or rec.trigger_id != self.pending:
            self.stats.late += 1
            log.warning("modbus: verdict for trigger %s came after its result time-out; not answered", rec.trigger_id)
            return False
        self._answer(RESULT_OF_VERDICT[rec.verdict], score=rec.score, latency_ms=rec.latency_ms)
        return True

    def tick(self, running: bool, counts: dict[str, int], product: int) -> None:
        """Periodic: the station's state, its counters and product; a trigger past its time-out."""
        self.values["running"] = int(running)
        self.values["active_product"] = product
        self.counters(counts)
        if self.pending is not None and self.clock() - self.pending_since > self.result_timeout_s:
            self.stats.timeouts += 1
            log.error("modbus: trigger %d got no verdict within modbus.result_timeout_s = %g s; answered result 4",
                      self.pending, self.result_timeout_s)
            self._answer(Result.ERROR, error=ErrorCode.NO_VERDICT)
        self._flags()

    def counters(self, counts: dict[str, int]) -> None:
        """Counters only ever grow: a snapshot taken earlier but applied later never moves them back."""
        for name, parts in COUNTERS.items():
            self.values[name] = max(self.values[name], sum(counts.get(p, 0) for p in parts))

    def product_refused(self) -> None:
        self._error(ErrorCode.PRODUCT_REFUSED)

    # -- internals ---------------------------------------------------------------------------
    def _answer(self, result: Result, score: float = 0.0, latency_ms: float = 0.0,
                error: ErrorCode = ErrorCode.NONE) -> None:
        """Write the result registers, THEN raise result_ready and drop busy (the handshake's order)."""
        v = self.values
        v["result"] = result
        v["score_x1000"] = min(65535, max(0, round(score * 1000)))
        v["latency_ms"] = min(65535, max(0, round(latency_ms)))
        if error:
            self._error(error)
        v["result_seq"] = (v["result_seq"] + 1) & 0xFFFF
        self.stats.cycle_ms.append((self.clock() - self.pending_since) * 1000)
        self.pending = None
        v["result_ready"] = 1
        v["busy"] = 0
        self._flags()

    def _error(self, code: ErrorCode) -> None:
        self.values["error_code"] = code
        self._flags()

    def _flags(self) -> None:
        self.values["error"] = int(self.values["error_code"] != ErrorCode.NONE)
        self.values["ready"] = int(self._ready())
