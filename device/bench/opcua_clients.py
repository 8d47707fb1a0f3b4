"""The OPC UA clients of ``kenpin bench opcua``, run in a child process (asyncua's own Client).

    python -m device.bench.opcua_clients inspect|flood|poll PORT OPTIONS_JSON OUT_JSON

inspect  SESSIONS user sessions call Inspect() back to back until PARTS parts are answered; each
         call's round-trip time and answer (trigger id, verdict, score) are kept.
flood    bad requests of every kind, one after another: garbage bytes on fresh TCP connections,
         reads of unknown nodes, writes and calls without rights, calls with wrong arguments or
         of unknown methods; each answer (a Bad status, or the connection closed for garbage) and
         the slowest answer are counted.
poll     one anonymous session reads every variable of the station in one Read request every
         PERIOD seconds, as a PLC polls its tags, in every other WINDOW seconds from START.
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from device.station.opcua_nodes import NAMESPACE, VARIABLES


def _client(port: int, opts: dict, user: bool) -> Client:
    c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=30)
    if user:
        c.set_user(opts["user"])
        c.set_password(opts["password"])
    return c


async def _ids(c: Client) -> tuple[int, ua.NodeId]:
    idx = await c.get_namespace_index(NAMESPACE)
    return idx, ua.NodeId("Station", idx)


async def inspect(port: int, opts: dict) -> dict[str, Any]:
    """Closed loop: each session calls Inspect again as soon as it has its answer."""
    left = [opts["parts"]]
    lat_ms: list[float] = []
    answers: list[list] = []
    errors: list[int] = []
    clients = [_client(port, opts, user=True) for _ in range(opts["sessions"])]
    for c in clients:
        await c.connect()
    idx, station = await _ids(clients[0])
    method = ua.NodeId("Station.Inspect", idx)

    async def session(c: Client) -> None:
        node = c.get_node(station)
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            try:
                verdict, score, tid = await node.call_method(method)
            except ua.UaStatusCodeError as e:
                errors.append(e.code)
                continue
            lat_ms.append((time.perf_counter() - t0) * 1000)
            answers.append([tid, verdict, score])

    t0 = time.perf_counter()
    await asyncio.gather(*(session(c) for c in clients))
    seconds = time.perf_counter() - t0
    for c in clients:
        await c.disconnect()
    return {"latencies_ms": lat_ms, "answers": answers, "errors": errors, "seconds": seconds}


async def _garbage(port: int, rng: random.Random) -> str:
    """One TCP connection sending random bytes, half the time behind a plausible message header."""
    head = rng.choice([b"", b"HELF", b"MSGF", b"OPNF", b"CLOF", b"ERRF"])
    size = rng.randint(0, 2 ** 32 - 1) if rng.random() < 0.3 else rng.randint(8, 400)
    body = head + size.to_bytes(4, "little") + rng.randbytes(rng.randint(0, 300)) if head else rng.randbytes(300)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"  # every connection slot taken: the limit at work
    writer.write(body)
    try:
        await writer.drain()
        await asyncio.wait_for(reader.read(1024), 0.05)  # an error message, a close, or silence
    except (OSError, asyncio.TimeoutError):
        pass
    writer.close()
    return "sent"


async def _expect_bad(counts: dict, slowest: list, kind: str, call: Any) -> None:
    t0 = time.perf_counter()
    try:
        await call
        counts[f"{kind}: answered good"] = counts.get(f"{kind}: answered good", 0) + 1
    except ua.UaStatusCodeError as e:
        name = ua.StatusCode(e.code).name
        counts[f"{kind}: {name}"] = counts.get(f"{kind}: {name}", 0) + 1
    slowest[0] = max(slowest[0], time.perf_counter() - t0)


async def flood(port: int, opts: dict) -> dict[str, Any]:
    """``opts['requests']`` bad requests in four kinds, interleaved so every kind meets every other."""
    rng = random.Random(opts.get("seed", 0))
    counts: dict[str, int] = {}
    slowest = [0.0]
    async with _client(port, opts, user=False) as anon, _client(port, opts, user=True) as user:
        idx, station = await _ids(anon)
        a_node, u_node = anon.get_node(station), user.get_node(station)
        wrong_args = [("SwitchProduct", ("seven",)), ("SwitchProduct", (1.5,)), ("SwitchProduct", ([1, 2],)),
                      ("SwitchProduct", ()), ("Inspect", (1,)), ("NoSuchMethod", ())]
        t0 = time.perf_counter()
        for i in range(opts["requests"]):
            kind = i % 4
            if kind == 0:
                what = await _garbage(port, rng)
                counts[f"garbage: {what}"] = counts.get(f"garbage: {what}", 0) + 1
            elif kind == 1:
                node = anon.get_node(ua.NodeId(f"Station.Nothing{rng.randint(0, 10 ** 6)}", idx))
                await _expect_bad(counts, slowest, "read of an unknown node", node.read_value())
            elif kind == 2 and i % 8 == 2:
                var = anon.get_node(ua.NodeId(f"Station.{rng.choice(VARIABLES).path}", idx))
                await _expect_bad(counts, slowest, "anonymous write", var.write_value(ua.Variant(1.0)))
            elif kind == 2:
                await _expect_bad(counts, slowest, "anonymous call",
                                  a_node.call_method(ua.NodeId("Station.Inspect", idx)))
            else:
                name, args = rng.choice(wrong_args)
                await _expect_bad(counts, slowest, "wrong arguments",
                                  u_node.call_method(ua.NodeId(f"Station.{name}", idx), *args))
        seconds = time.perf_counter() - t0
    return {"counts": counts, "slowest_answer_s": slowest[0], "seconds": seconds}


async def poll(port: int, opts: dict) -> dict[str, Any]:
    """Read every variable in one request each ``period`` seconds, in the even windows only.

    Windows of ``window`` seconds start at ``start`` (perf_counter, the machine's monotonic clock,
    shared with the parent): polled, quiet, polled, … ``pairs`` times, so the parent can compare
    the station's rate in each polled second with the quiet second next to it."""
    lat_ms: list[float] = []
    async with _client(port, opts, user=False) as c:
        idx, _ = await _ids(c)
        nodes = [c.get_node(ua.NodeId(f"Station.{v.path}", idx)) for v in VARIABLES]
        start, window, period = opts["start"], opts["window"], opts["period"]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu0 = time.process_time()  # from the first window: start-up and connecting are not polling
        for k in range(opts["pairs"]):
            due, end = start + 2 * k * window, start + (2 * k + 1) * window
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            while due < end:  # a fixed schedule: a slow answer does not push the next read later
                t0 = time.perf_counter()
                await c.read_values(nodes)
                lat_ms.append((time.perf_counter() - t0) * 1000)
                due += period
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
        cpu_s = time.process_time() - cpu0
    return {"latencies_ms": lat_ms, "polled_s": opts["pairs"] * window, "variables": len(VARIABLES), "cpu_s": cpu_s}


MODES = {"inspect": inspect, "flood": flood, "poll": poll}


def main(mode: str, port: str, opts: str, out: str) -> int:
    result = asyncio.run(MODES[mode](int(port), json.loads(opts)))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
