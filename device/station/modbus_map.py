"""The Modbus register map: ONE table, from which the server's data blocks and the documentation come.

The server (``device/station/modbus.py``) sizes its four data blocks from :data:`REGISTER_MAP`,
and ``kenpin modbus-map`` prints the same table (it is in README.md, and a test keeps the two
equal), so the map a PLC programmer reads cannot drift from the one the station serves.
Addresses are the 0-based protocol addresses that go in a request; the 1-based reference numbers
many PLC tools show (00001, 10001, 30001, 40001) are printed beside them.

Two entries claiming one address of the same table is a start-up error naming both
(:class:`Layout` checks the table before any server listens).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from device.errors import KenpinError


@dataclass(frozen=True)
class Table:
    """One of Modbus's four data tables, as a PLC programmer meets it."""

    name: str
    reference: int  # leading digit of the 1-based reference numbers (0xxxx, 1xxxx, 3xxxx, 4xxxx)
    read: tuple[int, ...]  # function codes that read it
    write: tuple[int, ...]  # function codes that write it (empty: the station's outputs, read-only)
    bits: bool  # one bit per address (coils, discrete inputs) rather than a 16-bit word


COILS = Table("coil", 0, (1,), (5, 15), True)
DISCRETE_INPUTS = Table("discrete input", 1, (2,), (), True)
HOLDING_REGISTERS = Table("holding register", 4, (3,), (6, 16), False)
INPUT_REGISTERS = Table("input register", 3, (4,), (), False)
TABLES = (COILS, DISCRETE_INPUTS, HOLDING_REGISTERS, INPUT_REGISTERS)  # pymodbus's order of data blocks
DOC_ORDER = (COILS, DISCRETE_INPUTS, INPUT_REGISTERS, HOLDING_REGISTERS)  # the PLC's, then the station's


@dataclass(frozen=True)
class Entry:
    """One named value of the map."""

    name: str
    table: Table
    address: int  # 0-based protocol address (the one in the request)
    meaning: str
    words: int = 1  # 2: an unsigned 32-bit value in two registers, HIGH word at the lower address

    @property
    def addresses(self) -> range:
        return range(self.address, self.address + self.words)

    @property
    def reference(self) -> str:
        """The 1-based reference number(s) PLC tools show, e.g. ``30006-30007``."""
        first = f"{self.table.reference}{self.address + 1:04d}"
        return first if self.words == 1 else f"{first}-{self.table.reference}{self.address + self.words:04d}"

    @property
    def kind(self) -> str:
        return "bit" if self.table.bits else ("uint32" if self.words == 2 else "uint16")


class Result(enum.IntEnum):
    """The ``result`` register."""

    NONE = 0  # no trigger answered yet since start-up
    OK = 1
    NG = 2  # the verdict ``defect``
    RETAKE = 3  # the capture-quality gate: the frame was unusable, inspect the part again
    ERROR = 4  # the trigger got no verdict: error_code says why


RESULT_OF_VERDICT = {"ok": Result.OK, "defect": Result.NG, "retake": Result.RETAKE}


class ErrorCode(enum.IntEnum):
    """The ``error_code`` register: the last error since the last accepted trigger (0 = none)."""

    NONE = 0
    TRIGGER_REFUSED = 1  # the station's trigger backlog was full (trigger.max_backlog): result 4
    NO_VERDICT = 2  # no verdict within modbus.result_timeout_s (inspection failed, camera lost): result 4
    NOT_READY = 3  # trigger raised while ready = 0: refused with exception 06, nothing queued
    PRODUCT_REFUSED = 4  # product write refused (unknown number, or it could not be switched): exception 03


ERROR_TEXT = {
    ErrorCode.NONE: "no error",
    ErrorCode.TRIGGER_REFUSED: "trigger refused: the station's trigger backlog is full (trigger.max_backlog); result = 4",
    ErrorCode.NO_VERDICT: "no verdict within modbus.result_timeout_s (inspection failed or camera lost: see the "
                          "station log); result = 4; the part may still be judged and recorded later",
    ErrorCode.NOT_READY: "trigger raised while ready = 0 (busy, result not acknowledged, or not running): refused "
                         "with exception 06, nothing queued, result registers unchanged",
    ErrorCode.PRODUCT_REFUSED: "product write refused (unknown number, or the switch failed: see the audit trail): "
                               "exception 03, the station stays on its product",
}

REGISTER_MAP: tuple[Entry, ...] = (
    Entry("trigger", COILS, 0, "PLC sets 0 → 1: a part is here; one verdict per rising edge. Accepted only while "
                               "ready = 1, else exception 06 and error_code 3. The PLC clears it again."),
    Entry("result_ack", COILS, 1, "PLC sets 0 → 1 once it has read the result: clears result_ready. The PLC clears "
                                  "it again (with the next trigger, e.g. one FC15 write of [1, 0])."),
    Entry("ready", DISCRETE_INPUTS, 0, "1 = a trigger is accepted now: running, not busy, no result waiting for "
                                       "result_ack"),
    Entry("busy", DISCRETE_INPUTS, 1, "1 = inspecting the part of the last trigger"),
    Entry("result_ready", DISCRETE_INPUTS, 2, "1 = the result registers answer the last trigger (written before "
                                              "this bit rises); 0 again on result_ack"),
    Entry("error", DISCRETE_INPUTS, 3, "1 = error_code is not 0"),
    Entry("running", DISCRETE_INPUTS, 4, "1 = the station is inspecting (started, camera connected)"),
    Entry("result", INPUT_REGISTERS, 0, "answer to the last trigger: 1 OK, 2 NG, 3 retake, 4 error (see "
                                        "error_code); 0 = none yet"),
    Entry("score_x1000", INPUT_REGISTERS, 1, "that part's normalized anomaly score × 1000 (threshold at 500), "
                                             "capped at 65535"),
    Entry("latency_ms", INPUT_REGISTERS, 2, "that part's capture → verdict time in ms, capped at 65535"),
    Entry("error_code", INPUT_REGISTERS, 3, "last error since the last accepted trigger, 0 = none (codes below)"),
    Entry("result_seq", INPUT_REGISTERS, 4, "+1 (mod 65536) with every result written: tells a new answer from "
                                            "the previous one"),
    Entry("part_count", INPUT_REGISTERS, 5, "parts judged since start-up (OK + NG + retake), every trigger "
                                            "source", words=2),
    Entry("ok_count", INPUT_REGISTERS, 7, "OK parts since start-up", words=2),
    Entry("ng_count", INPUT_REGISTERS, 9, "NG parts since start-up", words=2),
    Entry("retake_count", INPUT_REGISTERS, 11, "retakes since start-up", words=2),
    Entry("error_count", INPUT_REGISTERS, 13, "trigger errors since start-up (refused, or inspection failed)",
          words=2),
    Entry("active_product", HOLDING_REGISTERS, 0, "the active product's number; write a number to switch "
                                                  "product between two parts (unknown: exception 03, error_code "
                                                  "4); 0 = the station lists no products"),
)

HANDSHAKE = (
    "Wait for ready = 1 (discrete input 0).",
    "Set trigger (coil 0) 0 → 1. The station drops ready, raises busy and inspects the next frame.",
    "Wait for result_ready = 1 (discrete input 2): result, score_x1000, latency_ms, error_code, result_seq "
    "and the counters were written before it rose. Read them (FC4 from input register 0).",
    "Set result_ack (coil 1) 0 → 1 and clear trigger: one FC15 write of [0, 1] to coil 0. result_ready "
    "falls and ready rises at once.",
    "Next part: one FC15 write of [1, 0] (trigger up, result_ack down). In one write the acknowledgement is "
    "applied before the trigger.",
    "A trigger that gets no verdict within modbus.result_timeout_s is answered with result = 4 and "
    "error_code = 2, so the PLC never waits forever.",
)


class Layout:
    """The checked map: every entry by name, every address by table; sizes of the data blocks."""

    def __init__(self, entries: tuple[Entry, ...] = REGISTER_MAP) -> None:
        self.entries = entries
        self.by_name: dict[str, Entry] = {}
        self.at: dict[Table, dict[int, Entry]] = {t: {} for t in TABLES}
        for e in entries:
            self._add(e)

    def _add(self, e: Entry) -> None:
        if e.name in self.by_name:
            raise KenpinError(f"modbus register map: two entries are named {e.name!r}; each name must be unique")
        if e.words not in (1, 2) or (e.table.bits and e.words != 1):
            raise KenpinError(f"modbus register map: {e.name} ({e.table.name}) has words = {e.words}; bits take "
                              "1, registers 1 or 2")
        if not 0 <= e.address <= 65536 - e.words:
            raise KenpinError(f"modbus register map: {e.name} at {e.table.name} {e.address} is outside 0-65535")
        for a in e.addresses:
            other = self.at[e.table].get(a)
            if other is not None:
                raise KenpinError(f"modbus register map: {e.name} ({e.table.name} {e.address}) collides with "
                                  f"{other.name} ({other.table.name} {other.address}) at {e.table.name} {a}")
            self.at[e.table][a] = e
        self.by_name[e.name] = e

    def size(self, table: Table) -> int:
        """Addresses 0 … size-1 of ``table`` make its data block (gaps answer exception 02)."""
        return max(self.at[table], default=-1) + 1

    def markdown(self) -> str:
        """The map, the codes and the handshake as Markdown: what ``kenpin modbus-map`` prints."""
        fcs = "; ".join(f"{t.name}s read " + "/".join(f"FC{c}" for c in t.read)
                        + (", written " + "/".join(f"FC{c}" for c in t.write) if t.write else ", read-only")
                        for t in DOC_ORDER)
        rows = [f"Function codes: {fcs}. Addresses are 0-based (ref. = the 1-based reference number).", "",
                "| table | address | ref. | name | type | meaning |", "|---|---|---|---|---|---|"]
        for t in DOC_ORDER:
            for e in sorted((e for e in self.entries if e.table is t), key=lambda e: e.address):
                where = str(e.address) if e.words == 1 else f"{e.address}-{e.address + 1}"
                rows.append(f"| {t.name} | {where} | {e.reference} | `{e.name}` | {e.kind} | {e.meaning} |")
        rows += ["", "32-bit counters: two registers, the HIGH word at the lower address (big-endian word "
                     "order, 'ABCD'); they wrap at 2^32. The counters, `running` and `active_product` are "
                     "refreshed every 0.1 s; the handshake bits and the result registers change at once.", "",
                 "`result`: " + ", ".join(f"{r.value} {r.name.lower()}" for r in Result) + ".", "",
                 "| `error_code` | meaning |", "|---|---|"]
        rows += [f"| {c.value} | {ERROR_TEXT[c]} |" for c in ErrorCode]
        rows += ["", "Handshake (the PLC owns the coils, the station the discrete inputs and registers):", ""]
        rows += [f"{i}. {step}" for i, step in enumerate(HANDSHAKE, 1)]
        return "\n".join(rows) + "\n"
