"""The PLC of ``kenpin bench modbus``: a separate process, as a PLC is a separate machine.

    python -m device.bench.modbus_plc handshake|poll|fuzz PORT A B OUT.json

Each job talks to the station's Modbus server on 127.0.0.1:PORT and writes its figures to
OUT.json: ``handshake`` runs A documented cycles; ``poll`` reads the status bits and result
registers every B ms for A seconds (its own CPU is reported: on the line it is the PLC's); ``fuzz``
sends A malformed frames (seed B). Cycles and polls use pymodbus's own client; malformed frames
need raw sockets, since no client sends them.
"""
from __future__ import annotations

import json
import random
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

UNIT = 1


def _client(port: int) -> Any:
    from pymodbus.client import ModbusTcpClient

    c = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    if not c.connect():
        raise SystemExit(f"cannot connect to the station's Modbus server on port {port}")
    return c


def plc_handshake(port: int, parts: int) -> dict:
    """``parts`` documented cycles; per part the PLC-observed trigger → result_ready ms and what it read."""
    c, out = _client(port), {"ms": [], "result": [], "seq": [], "exceptions": 0}
    c.write_coils(0, [False, False], device_id=UNIT)
    for _ in range(parts):
        while not c.read_discrete_inputs(0, count=5, device_id=UNIT).bits[0]:  # ready
            time.sleep(0.001)
        t0 = time.perf_counter()
        if c.write_coils(0, [True, False], device_id=UNIT).isError():  # trigger up, ack down
            out["exceptions"] += 1
            continue
        while not c.read_discrete_inputs(0, count=5, device_id=UNIT).bits[2]:  # result_ready
            time.sleep(0.001)
        out["ms"].append((time.perf_counter() - t0) * 1000)
        regs = c.read_input_registers(0, count=5, device_id=UNIT).registers
        out["result"].append(regs[0])
        out["seq"].append(regs[4])
        c.write_coils(0, [False, True], device_id=UNIT)  # ack up, trigger down
    c.close()
    return out


def plc_poll(port: int, seconds: float, poll_ms: float) -> dict:
    """Read the status bits and the result registers every ``poll_ms``, as a PLC scan would."""
    c, n, errors = _client(port), 0, 0
    period, end = poll_ms / 1000, time.perf_counter() + seconds
    nxt = time.perf_counter()
    while (now := time.perf_counter()) < end:
        errors += c.read_discrete_inputs(0, count=5, device_id=UNIT).isError()
        errors += c.read_input_registers(0, count=15, device_id=UNIT).isError()
        n += 2
        nxt = max(nxt + period, now)
        time.sleep(max(0.0, nxt - time.perf_counter()))
    c.close()
    return {"requests": n, "errors": errors, "rate_per_s": n / seconds}


def malformed(rng: random.Random) -> bytes:
    """One malformed Modbus TCP frame of a random kind."""
    tid = rng.randrange(65536).to_bytes(2, "big")
    kind = rng.randrange(6)
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:  # the length field disagrees with what follows
        return tid + b"\x00\x00" + rng.randrange(65536).to_bytes(2, "big") + bytes([UNIT, 3, 0, 0, 0, 1])
    if kind == 2:  # a function code the server does not have
        fc = rng.choice([0, 7, 9, 10, 12, 13, 14, 18, 19, 25, 0x29, 0x41, 0x5A, 0x64, 0x7F, 0x80, 0xFF])
        return tid + b"\x00\x00\x00\x04" + bytes([UNIT, fc]) + rng.randbytes(2)
    if kind == 3:  # protocol id not 0
        return tid + rng.randbytes(2) + b"\x00\x06" + bytes([UNIT, 4, 0, 0, 0, 1])
    if kind == 4:  # another unit id
        return tid + b"\x00\x00\x00\x06" + bytes([rng.choice([0, 2, 17, 255]), 4, 0, 0, 0, 1])
    fc = rng.choice([1, 2, 3, 4, 5, 6, 15, 16, 22, 23])  # a real function code, random fields and length
    body = rng.randbytes(rng.randrange(0, 12))
    return tid + b"\x00\x00" + (len(body) + 2).to_bytes(2, "big") + bytes([UNIT, fc]) + body


def _burst(port: int, n: int) -> int:
    """Open ``n`` connections at once (over the limit); how many the server closed at once."""
    socks, closed = [], 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            closed += 1
    time.sleep(0.05)
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except (BlockingIOError, OSError):
            pass
        s.close()
    return closed


def plc_fuzz(port: int, frames: int, seed: int) -> dict:
    """Send ``frames`` malformed frames, reconnecting when closed; bursts of connections between."""
    rng, sent, answered, reconnects, burst_closed = random.Random(seed), 0, 0, 0, 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    while sent < frames:
        if sent and sent % 500 == 0:
            burst_closed += _burst(port, 8)
        try:
            sock.sendall(malformed(rng))
            sent += 1
            if select.select([sock], [], [], 0.005)[0]:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionResetError
                answered += 1
        except OSError:
            sock.close()
            reconnects += 1
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    sock.close()
    return {"sent": sent, "answered": answered, "reconnects": reconnects, "burst_closed": burst_closed}


def _plc_main(mode: str, port: str, a: str, b: str, out: str) -> int:
    """One PLC job, its figures written as JSON to ``out``."""
    if mode == "handshake":
        res = plc_handshake(int(port), int(a))
    elif mode == "poll":  # not niced: light, and it must keep its scan period on a busy machine
        res = plc_poll(int(port), float(a), float(b))
    else:
        res = plc_fuzz(int(port), int(a), int(b))
    Path(out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_plc_main(*sys.argv[1:]))
