"""The Modbus TCP server a PLC talks to (pymodbus 3.16): trigger, results, counters, product.

The register map is :mod:`device.station.modbus_map` (``kenpin modbus-map`` prints it); the
handshake and the values live in :class:`~device.station.modbus_plc.PlcImage`. This module is
the network side: pymodbus's server with one data block per table, sized from the map, and
SimDevice's ``action`` hook, which pymodbus calls on every request before it answers — there
the image is copied into the block for a read, and a write is judged (edges, read-only mode,
product switch) and refused with a Modbus exception when it must be.

It runs in its own thread with its own asyncio loop, so nothing a client does (slow, malformed,
too many) reaches the inspection threads: the station is only ever asked to ``trigger`` (a
queue append), to ``switch_product`` (in a worker thread), and for its counters. A second thread
follows the station's verdicts and hands the Modbus-triggered ones to the loop.

Bounded: ``max_connections`` and ``allowed_clients`` are checked when a client connects (refused
connections are closed at once, logged at most every 10 s); a connection without a valid request
for ``idle_timeout_s`` is closed; a request for another unit id is answered with exception 0B;
pymodbus answers undecodable frames with exception 01 and drops unframeable bytes (its receive
buffer is bounded); its own log lines are throttled so that a flood cannot fill the journal.
"""
from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import socket
import threading
import time
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from device.errors import KenpinError
from device.station.modbus_map import (COILS, DISCRETE_INPUTS, HOLDING_REGISTERS, INPUT_REGISTERS, TABLES, Layout,
                                       Table)
from device.station.modbus_plc import NotReady, PlcImage
from device.station.modbus_settings import ModbusSettings

log = logging.getLogger("kenpin.modbus")

TICK_S = 0.1  # running, counters, product and result time-outs are refreshed this often
FUNCTION_TABLE = {1: COILS, 5: COILS, 15: COILS, 2: DISCRETE_INPUTS, 4: INPUT_REGISTERS,
                  **{fc: HOLDING_REGISTERS for fc in (3, 6, 16, 22, 23)}}
# The client address of the request being served. A ContextVar is a key, not shared state: each
# request runs in its own asyncio task, and the value set there is that task's alone.
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("kenpin_modbus_peer", default="?")


def preflight(settings: ModbusSettings) -> None:
    """What can stop the server, checked before the station opens anything: the register map
    (a collision names both entries) and the port."""
    Layout()
    check_port(settings)


def check_port(settings: ModbusSettings) -> None:
    """Raise one sentence naming ``modbus.port`` when the server could not listen there."""
    host, port = settings.host, settings.port
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise KenpinError(f"modbus.host = {host!r}: not an address to listen on ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise KenpinError(f"modbus.port = {port}: port {port} on {host} is already in use by another "
                                  "program; stop it or choose another modbus.port") from None
            if e.errno == errno.EACCES:
                raise KenpinError(f"modbus.port = {port}: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                                  "use 5020 (the default) or grant the service that capability") from None
            raise KenpinError(f"modbus.port = {port}: cannot listen on {host}:{port} ({e.strerror})") from None


class _Throttle:
    """At most one line per ``every`` seconds; the lines held back are counted in the next one."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.next, self.held = every, 0.0, 0

    def allow(self) -> int | None:
        """None: hold this line back; else how many were held back before it."""
        now = time.monotonic()
        if now < self.next:
            self.held += 1
            return None
        held, self.held, self.next = self.held, 0, now + self.every
        return held


class _QuietLibrary(logging.Filter):
    """Throttles pymodbus's own log lines (one per malformed frame) and drops the dump of the last
    20 frames it appends to an error: a client must not be able to fill the journal."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = _Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        held = self.throttle.allow()
        if held is None:
            return False
        text = record.getMessage().split("\n", 1)[0]
        record.msg, record.args = f"pymodbus: {text}" + (f" ({held} more held back)" if held else ""), None
        return True


class _Connection(ServerRequestHandler):
    """One client: refused at once when not allowed or over the limit; answers only our unit id."""

    def __init__(self, owner: "_Listener") -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self.listener_ = owner
        self.peer = "?"
        self.last_seen = time.monotonic()

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        why = self.listener_.refusal(self.peer)
        if why:
            # Never handed to pymodbus (its transport stays unset), so it is forgotten here.
            self.listener_.active_connections.pop(self.unique_id, None)
            transport.abort()
            self.listener_.owner.refused(self.peer, why)
            return
        super().connection_made(transport)

    async def handle_request(self) -> None:
        pdu = self.last_pdu
        if pdu is None:
            return
        self.last_seen = time.monotonic()
        if pdu.dev_id != self.listener_.owner.settings.unit_id:
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
            response.transaction_id, response.dev_id = pdu.transaction_id, pdu.dev_id
            self.server_send(response, self.last_addr)
            return
        PEER.set(self.peer)  # this request's task only (see PEER)
        await super().handle_request()


class _Listener(ModbusTcpServer):
    """pymodbus's TCP server, with our connections (allow-list, limit, unit id, idle time)."""

    def __init__(self, owner: "ModbusServer", device: SimDevice) -> None:
        super().__init__(device, address=(owner.settings.host, owner.settings.port))
        self.owner = owner

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)

    def refusal(self, peer: str) -> str | None:
        """Why a client at ``peer`` may not connect now, or None."""
        s = self.owner.settings
        if not s.allows(peer):
            return "not in modbus.allowed_clients"
        if len(self.active_connections) > s.max_connections:  # this one is already counted
            return f"modbus.max_connections = {s.max_connections} reached"
        return None

    def close_idle(self, idle_s: float) -> None:
        now = time.monotonic()
        for conn in list(self.active_connections.values()):
            if isinstance(conn, _Connection) and now - conn.last_seen > idle_s:
                log.info("modbus: closing the connection of %s: no valid request for %g s (modbus.idle_timeout_s)",
                         conn.peer, idle_s)
                conn.close()


class ModbusServer:
    """The station's Modbus TCP server: ``start()`` listens (or raises one sentence), ``stop()`` closes."""

    def __init__(self, station: Any, settings: ModbusSettings, layout: Layout | None = None) -> None:
        self.station, self.settings = station, settings
        self.layout = layout if layout is not None else Layout()  # a collision in the map stops start-up here
        self.image = PlcImage(self.layout, settings.result_timeout_s)
        self.refused_connections = 0
        self._throttle = _Throttle()
        self._quiet = _QuietLibrary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: _Listener | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._stop = threading.Event()
        self._failure: str | None = None
        self._sub: Any = None
        self._thread = threading.Thread(target=self._run_loop, name="modbus", daemon=True)
        self._collector = threading.Thread(target=self._collect, name="modbus-verdicts", daemon=True)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "ModbusServer":
        """Listen on ``host:port`` in the server's thread; KenpinError naming modbus.port if it cannot."""
        check_port(self.settings)
        self._sub = self.station.subscribe(maxsize=4096)
        logging.getLogger("pymodbus.logging").addFilter(self._quiet)
        self._thread.start()
        if not self._started.wait(10) or self._failure:
            self._stop.set()
            self._thread.join(5)
            self._release()
            raise KenpinError(self._failure or "modbus: the server did not start within 10 s")
        self._collector.start()
        s = self.settings
        log.info("modbus: serving unit %d on %s:%d (%s, up to %d connections%s)", s.unit_id, s.host, s.port,
                 "read and write" if s.writes else "read-only", s.max_connections,
                 f", clients {', '.join(s.allowed_clients)}" if s.allowed_clients else ", any client")
        return self

    def stop(self) -> None:
        """Close every connection and the listener; stop following verdicts."""
        self._stop.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop already ended
                pass
        for thread, wait in ((self._thread, 5), (self._collector, 2)):
            if thread.is_alive():
                thread.join(wait)
        self._release()

    def _release(self) -> None:
        if self._sub is not None:
            self.station.unsubscribe(self._sub)
            self._sub = None
        logging.getLogger("pymodbus.logging").removeFilter(self._quiet)

    @property
    def connections(self) -> int:
        """Clients connected now."""
        listener = self._listener
        return len(listener.active_connections) if listener is not None else 0

    def refused(self, peer: str, why: str) -> None:
        """A connection refused (allow-list or limit): counted; logged at most every 10 s."""
        self.refused_connections += 1
        held = self._throttle.allow()
        if held is not None:
            log.warning("modbus: refused a connection from %s: %s%s", peer, why,
                        f" ({held} more refused since the last such line)" if held else "")

    # -- the server's thread -----------------------------------------------------------------
    def _run_loop(self) -> None:
        """The thread's own event loop: uvloop where installed (as uvicorn uses it), which took about
        half the stock loop's CPU per request in a side-by-side try on the x86 development machine."""
        try:
            import uvloop
        except ImportError:
            asyncio.run(self._serve())
        else:
            uvloop.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        s = self.settings
        listener = _Listener(self, self._device())
        try:
            await listener.serve_forever(background=True)
        except RuntimeError:  # pymodbus's "could not listen": the port was taken after check_port
            self._failure = f"modbus.port = {s.port}: could not listen on {s.host}:{s.port}; is the port in use?"
            self._started.set()
            return
        self._listener = listener
        self._tick()
        self._started.set()
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), TICK_S)
                except asyncio.TimeoutError:
                    self._tick()
        finally:
            await listener.shutdown()

    def _device(self) -> SimDevice:
        """One data block per table, addresses 0 … size-1 as the map sizes them."""
        blocks = []
        for t in TABLES:
            n = max(1, self.layout.size(t))
            blocks.append([SimData(0, values=[False] * n if t.bits else [0] * n,
                                   datatype=DataType.BITS if t.bits else DataType.REGISTERS)])
        return SimDevice(self.settings.unit_id, simdata=tuple(blocks), action=self._action)

    def _tick(self) -> None:
        st = self.station
        running = bool(st.running and st.camera_state.connected)
        self.image.tick(running, st.counters.snapshot()[0], self._product())
        if self.settings.idle_timeout_s and self._listener is not None:
            self._listener.close_idle(self.settings.idle_timeout_s)

    def _product(self) -> int:
        """The active product's number (0: a station without a products: list runs its one product, 0)."""
        return int(self.station.active_product.number)

    async def _action(self, function_code: int, start: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus calls this for every request before answering: fill a read, judge a write."""
        table = FUNCTION_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            refusal = await self._write(table, address, list(values))
            if refusal is not None:
                return refusal
        self._fill(table, registers)
        return None

    def _fill(self, table: Table, registers: list[int]) -> None:
        """Copy the image into pymodbus's block, which starts at address 0 like the map (bit tables:
        16 bits a register, bit 0 first)."""
        words = self.image.words(table)
        if table.bits:
            words = [sum(b << i for i, b in enumerate(words[k:k + 16])) for k in range(0, len(words), 16)]
        registers[:len(words)] = words

    async def _write(self, table: Table, address: int, values: list) -> ExcCodes | None:
        if not self.settings.writes:
            return ExcCodes.ILLEGAL_FUNCTION
        at = self.layout.at[table]
        if any(a not in at for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        if table is COILS:
            try:
                self.image.write_coils(address, values, self._trigger)
            except NotReady:
                return ExcCodes.DEVICE_BUSY
            return None
        product = self.layout.by_name["active_product"]
        if address != product.address or len(values) != 1:  # the one writable register
            return ExcCodes.ILLEGAL_ADDRESS
        return await self._switch_product(int(values[0]))

    def _trigger(self) -> int | None:
        """Queue a Modbus trigger; its id, or None when the station's queue refused it (counted there)."""
        before = self.station.triggers.refused
        tid = self.station.trigger("modbus")
        return None if self.station.triggers.refused != before else tid

    async def _switch_product(self, number: int) -> ExcCodes | None:
        if number == self._product():
            return None
        who = f"modbus {PEER.get()}"
        try:  # in a worker thread: a switch may wait for the part in flight, the loop must not
            await asyncio.get_running_loop().run_in_executor(None, self.station.switch_product, number, who)
        except KenpinError as e:
            log.warning("modbus: product %d written by %s refused: %s", number, who, e)
            self.image.product_refused()
            return ExcCodes.ILLEGAL_VALUE
        self.image.values["active_product"] = self._product()
        return None

    # -- verdicts --------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Station verdicts → the loop: a Modbus-triggered one may be the answer the PLC waits for."""
        for rec in self._sub.follow(self._stop):
            if rec.trigger_source != "modbus":
                continue  # counters come with the next tick
            counts = self.station.counters.snapshot()[0]  # already counts this part (counted before told)
            try:
                self._loop.call_soon_threadsafe(self.image.verdict, rec, counts)
            except RuntimeError:  # the loop ended: stopping
                return


def start_modbus(station: Any, settings: ModbusSettings | None) -> ModbusServer | None:
    """The server for a station's ``modbus:`` block, listening; None without one or with enabled: false."""
    if settings is None or not settings.enabled:
        return None
    return ModbusServer(station, settings).start()
