"""The station's OPC UA server (asyncua): a Station object a PLC reads, and Inspect / SwitchProduct.

The server runs in its own thread with its own asyncio loop, so nothing it does (slow clients,
bad requests, logins) runs on the inspection path; it only reads the station's state and queues
triggers. Verdicts reach it through a station subscription: a feed thread hands them to the loop,
where one coroutine writes the variables and only then answers the ``Inspect`` calls waiting for
those parts — when ``Inspect`` returns, the variables already show its part (or a later one).

    server = OpcUaServer(station, cfg.opcua, cfg.config_file).start()   # KenpinError if it cannot
    ...
    server.stop()   # after station.stop(): the parts finished in flight still answer their callers

Address space: ``device.station.opcua_nodes``; who may do what: ``device.station.opcua_security``.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from asyncua import Server, ua

from device.errors import KenpinError
from device.station import opcua_nodes as nodes
from device.station.opcua_log import QuietLogs
from device.station.opcua_security import (StationRules, StationUsers, application_uri, read_certificate,
                                           trusted_certificates)
from device.station.opcua_settings import OpcUaSettings
from device.station.record import VerdictRecord

log = logging.getLogger("kenpin.opcua")

POLICIES = {"none": ua.SecurityPolicyType.NoSecurity, "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
            "sign-and-encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}
INTEGER_TYPES = {ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
                 ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64}
HEALTH_EVERY_S = 1.0  # Station.status() touches the disk; once a second is enough for a health bit
ACTIVATION_GRACE_S = 10.0  # a connection that opens no session within this is closed (parked sockets)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # requests and answers here are small; asyncua's default is 100 MB


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)


class OpcUaServer:
    """One station's OPC UA server; ``start()`` binds (or raises KenpinError), ``stop()`` closes it."""

    def __init__(self, station: Any, settings: OpcUaSettings, config_file: Path | None = None) -> None:
        self.station, self.settings = station, settings
        self._where = f"{config_file}: " if config_file else ""
        self._rules = StationRules()
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._feed_thread = threading.Thread(target=self._feed, name="opcua-feed", daemon=True)
        self._ready = threading.Event()
        self._feed_stop = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._sub: Any = None
        self._quiet: QuietLogs | None = None
        self._pending: list[VerdictRecord] = []  # delivered by the feed, not yet written (loop thread only)
        self._waiters: dict[int, asyncio.Future[VerdictRecord | None]] = {}
        self.counts = {"inspect_answered": 0, "inspect_timeouts": 0, "switches": 0}

    @property
    def serving(self) -> bool:
        """True while the server's thread runs (False once stopped, or if it ever failed)."""
        return self._thread.is_alive()

    @property
    def log_lines_held(self) -> int:
        """Log lines held back so far because a client flooded the server with bad requests."""
        return self._quiet.filter.held_total if self._quiet else 0

    # -- life cycle (caller's thread) -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "OpcUaServer":
        """Bind the port and serve; KenpinError (one sentence naming the key) when it cannot."""
        _check_port(self.settings, self._where)
        self._quiet = QuietLogs()
        self._sub = self.station.subscribe(maxsize=65536)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise KenpinError(f"opcua: the server did not start within {timeout:.0f} s")
        if self._error is not None:
            self._thread.join(timeout=10)
            self.station.unsubscribe(self._sub)
            self._quiet.remove()
            if isinstance(self._error, KenpinError):
                raise self._error
            raise KenpinError(f"{self._where}opcua: the server did not start ({self._error})")
        log.info("opcua: serving %s (security %s, anonymous %s, %d user(s))", self.settings.endpoint,
                 "/".join(self.settings.security), self.settings.anonymous, len(self.settings.users))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Answer what is waiting (verdicts already recorded first, the rest BadShutdown), then close."""
        if self._loop is None:
            return  # never started
        self._feed_stop.set()
        if self._thread.is_alive():  # (a server that died on an error is only cleaned up after)
            self._feed_thread.join(timeout)  # it hands over every verdict still queued before it ends
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self.station.unsubscribe(self._sub)  # both idempotent: stop() may be called twice
        self._quiet.remove()
        log.info("opcua: stopped (%s)", ", ".join(f"{k} {v}" for k, v in self.counts.items()))

    # -- the loop thread ------------------------------------------------------------------------
    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # start-up failures are reported by start(); later ones logged
            if self._ready.is_set():
                log.exception("opcua: the server stopped on an error")
            self._error = e
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self) -> None:
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        server = await self._make_server()
        values = nodes.Values(server, await nodes.build(server, self._inspect, self._switch_product))
        await values.write({"Name": self.station.name, **nodes.health_values(self.station.status())})
        await self._update(values)  # counters and product as they are now, before any client reads them
        try:
            await server.start()
        except OSError as e:  # the port was taken between the check and now
            raise KenpinError(_port_message(self.settings, e, self._where)) from None
        self._feed_thread.start()
        updater = asyncio.create_task(self._update_loop(values))
        self._ready.set()
        try:
            await self._stop.wait()
            await self._update(values)  # what the feed handed over last: its callers get their verdicts
        finally:
            updater.cancel()
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0.05)  # the answers go out before the connections close
            await server.stop()

    async def _make_server(self) -> Server:
        s = self.settings
        server = Server(user_manager=StationUsers(s, trusted_certificates(s.trusted_certs)))
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name(f"kenpin {self.station.name}")
        cert = read_certificate(Path(s.certificate), "certificate") if s.certificate else None
        if cert is not None:
            await server.load_certificate(s.certificate)
            try:
                await server.load_private_key(s.private_key)
            except (ValueError, TypeError) as e:
                raise KenpinError(f"{self._where}opcua.private_key = {s.private_key!r}: not an unencrypted "
                                  f"private key ({e})") from None
        await server.set_application_uri(application_uri(cert, self.station.name))
        server.set_security_policy([POLICIES[m] for m in s.security], permission_ruleset=self._rules)
        server.set_identity_tokens(self._identity_tokens())
        server.iserver.max_connections = s.max_connections  # one session per connection in asyncua
        server.iserver.max_pending_activation_seconds = ACTIVATION_GRACE_S
        server.limits.max_message_size = MAX_MESSAGE_BYTES
        server.limits.max_chunk_count = MAX_MESSAGE_BYTES // server.limits.max_recv_buffer + 1
        if s.users and s.security == ("none",):
            log.warning("opcua: users log in over an unencrypted endpoint: their passwords cross the network in "
                        "clear; add sign-and-encrypt to opcua.security (with a certificate)")
        return server

    def _identity_tokens(self) -> list[type]:
        s, tokens = self.settings, []
        if s.anonymous == "read":
            tokens.append(ua.AnonymousIdentityToken)
        if s.users:
            tokens.append(ua.UserNameIdentityToken)
        if s.trusted_certs:
            tokens.append(ua.X509IdentityToken)
        return tokens

    # -- verdicts: feed thread → loop ----------------------------------------------------------
    def _feed(self) -> None:
        """Hand the station's verdicts to the loop in batches; ends once stopped and drained."""
        while True:
            try:
                batch = [self._sub.get(timeout=0.1)]
            except queue.Empty:
                if self._feed_stop.is_set():
                    return
                continue
            while True:
                try:
                    batch.append(self._sub.get(timeout=0))
                except queue.Empty:
                    break
            self._loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[VerdictRecord]) -> None:
        self._pending.extend(batch)
        self._wake.set()

    async def _update_loop(self, values: nodes.Values) -> None:
        next_health = time.monotonic() + HEALTH_EVERY_S
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), HEALTH_EVERY_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._update(values)
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + HEALTH_EVERY_S
                    await values.write(nodes.health_values(self.station.status()))
            except Exception:  # a variable not updated must not end the updates, nor the server
                log.exception("opcua: updating the variables failed")

    async def _update(self, values: nodes.Values) -> None:
        """Write the newest part's variables and the counters, then answer the Inspect calls they settle."""
        recs, self._pending = self._pending, []
        if recs:
            await values.write(nodes.verdict_values(recs[-1]), recs[-1].time)
        await values.write({**nodes.counter_values(self.station.counters.counts()),
                            "ActiveProduct": self._active_product()})
        for rec in recs:
            fut = self._waiters.get(rec.trigger_id) if rec.trigger_source == "opcua" else None
            if fut is not None and not fut.done():
                fut.set_result(rec)

    def _active_product(self) -> int:
        # A station without a products: list runs its one implicit product, number 0.
        return int(self.station.active_product.number)

    # -- methods (loop thread; the caller's rights were checked by StationRules) -----------------
    async def _inspect(self, parent: ua.NodeId, *args: Any) -> Any:
        """Trigger one part and answer its own verdict: [Verdict, Score, TriggerId], or a Bad status."""
        if args:
            return _status(ua.StatusCodes.BadTooManyArguments)
        if not self.station.running:
            return _status(ua.StatusCodes.BadInvalidState)
        # No await between the trigger and registering its waiter: the verdict is handled on this
        # loop, so it cannot be handled before someone waits for it.
        tid = self.station.trigger("opcua")
        fut = self._waiters[tid] = asyncio.get_running_loop().create_future()
        try:
            rec = await asyncio.wait_for(fut, self.settings.inspect_timeout_s)
        except asyncio.TimeoutError:
            self.counts["inspect_timeouts"] += 1
            log.warning("opcua: Inspect trigger %d got no verdict within %.1f s (opcua.inspect_timeout_s)", tid,
                        self.settings.inspect_timeout_s)
            return _status(ua.StatusCodes.BadTimeout)
        finally:
            self._waiters.pop(tid, None)
        if rec is None:
            return _status(ua.StatusCodes.BadShutdown)
        self.counts["inspect_answered"] += 1
        return [ua.Variant(rec.verdict, ua.VariantType.String), ua.Variant(float(rec.score), ua.VariantType.Double),
                ua.Variant(tid % nodes.COUNTER_WRAP, ua.VariantType.UInt32)]

    async def _switch_product(self, parent: ua.NodeId, *args: Any) -> Any:
        """Switch the active product from the next part on; who switched goes in the audit trail."""
        if len(args) != 1:
            return _status(ua.StatusCodes.BadArgumentsMissing if not args else ua.StatusCodes.BadTooManyArguments)
        arg = args[0]
        if not isinstance(arg, ua.Variant) or arg.VariantType not in INTEGER_TYPES or not isinstance(arg.Value, int):
            return ua.CallMethodResult(StatusCode=_status(ua.StatusCodes.BadInvalidArgument),
                                       InputArgumentResults=[_status(ua.StatusCodes.BadTypeMismatch)])
        who = self._rules.caller.get()
        try:  # in a worker thread: the switch waits for the part in flight, the loop must not
            await asyncio.get_running_loop().run_in_executor(None, self.station.switch_product, int(arg.Value), who)
        except KenpinError as e:
            log.warning("opcua: SwitchProduct(%s) by %s refused: %s", arg.Value, who, e)
            return ua.CallMethodResult(StatusCode=_status(ua.StatusCodes.BadInvalidArgument),
                                       InputArgumentResults=[_status(ua.StatusCodes.BadOutOfRange)])
        self.counts["switches"] += 1
        return [ua.Variant(self._active_product(), ua.VariantType.Int32)]


def _port_message(s: OpcUaSettings, e: OSError, where: str) -> str:
    """One sentence for a port that cannot be bound, naming the key to change."""
    if e.errno == errno.EADDRINUSE:
        return (f"{where}opcua.port = {s.port}: the port is already in use on {s.host} (another OPC UA server "
                "or kenpin instance?); choose a free port or stop the other program")
    if e.errno == errno.EACCES:
        return f"{where}opcua.port = {s.port}: not allowed to listen there (ports below 1024 need privileges)"
    return f"{where}opcua.host = {s.host!r}: cannot listen on port {s.port} there ({e.strerror or e})"


def _check_port(s: OpcUaSettings, where: str) -> None:
    """Bind and release the port first, so that a taken port is one sentence, not asyncua's traceback.

    Bound, never listening: a client connecting in that instant (a PLC polling for the station as
    it starts) must not be accepted by a socket about to close, which resets it mid-handshake.
    """
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: TIME_WAIT is no conflict
            probe.bind((s.host, s.port))
    except socket.gaierror as e:
        raise KenpinError(f"{where}opcua.host = {s.host!r}: not a known address ({e.strerror})") from None
    except OSError as e:
        raise KenpinError(_port_message(s, e, where)) from None


def start_opcua(station: Any, settings: OpcUaSettings | None, config_file: Path | None = None) -> OpcUaServer | None:
    """The server for a station's ``opcua:`` block, started; None without one or when it says enabled: false."""
    if settings is None or not settings.enabled:
        return None
    return OpcUaServer(station, settings, config_file).start()
