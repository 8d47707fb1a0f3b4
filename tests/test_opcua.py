"""The station's OPC UA server, driven by asyncua's own Client on loopback.

SwitchProduct is exercised once products are in the station core (it calls
``Station.switch_product``); here it is only checked to refuse malformed arguments.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from asyncua import ua

from device.dashboard.auth import hash_token
from device.errors import KenpinError
from device.station.config import parse_config
from device.station.opcua import _check_port, start_opcua
from device.station.opcua_settings import OpcUaSettings
from device.station.service import RunOptions, serve
from device.station.station import Station
from tests.opcua_helpers import Station as Nodes
from tests.opcua_helpers import client, free_port, secure, self_signed
from tests.station_helpers import replay_folder, service_config_file, station_config, wait_for

PASSWORD = "line-4-plc-pass"
HASH = hash_token(PASSWORD, iterations=1000)  # the config format; few iterations keep the tests fast


def _opcua_block(port: int, extra: str = "") -> str:
    return f"opcua: {{host: 127.0.0.1, port: {port}, users: {{plc: '{HASH}'}}{extra}}}"


@pytest.fixture(scope="module")
def line(tiny_line, tiny_bundle, tmp_path_factory):
    """A running station (software triggers, good and defective parts in turn) with its OPC UA server."""
    tmp = tmp_path_factory.mktemp("opcua")
    port = free_port()
    cfg = station_config(tmp, tiny_bundle, replay_folder(tiny_line, tmp / "replay"), loop=True, mode="software",
                         extra=_opcua_block(port))
    st = Station(cfg)
    st.start()
    server = start_opcua(st, cfg.opcua)
    yield SimpleNamespace(station=st, server=server, port=port, tmp=tmp, cfg=cfg)
    st.stop()
    server.stop()


def _code(exc: pytest.ExceptionInfo) -> int:
    return exc.value.code


def _recorded(cfg, trigger_ids: list[int]) -> dict[int, tuple[str, float, str]]:
    db = sqlite3.connect(cfg.station.data_dir / "verdicts.sqlite3")
    try:
        marks = ",".join("?" * len(trigger_ids))
        rows = db.execute(f"SELECT trigger_id, verdict, score, trigger_source FROM verdicts WHERE trigger_id IN ({marks})",
                          trigger_ids).fetchall()
    finally:
        db.close()
    return {t: (v, s, src) for t, v, s, src in rows}


def test_anonymous_reads_but_cannot_write_or_call(line):
    before = line.station.counters.snapshot()[0]["triggers"]

    async def session() -> dict:
        async with client(line.port) as c:
            st = await Nodes.of(c)
            seen = {p: await st.read(p) for p in ("Name", "Counters.Triggers", "Health.Running", "BundleId")}
            with pytest.raises(ua.UaStatusCodeError) as call:
                await st.call("Inspect")
            with pytest.raises(ua.UaStatusCodeError) as write:
                await st.var("LastVerdict").write_value("ok")
            return {**seen, "call": _code(call), "write": _code(write)}

    got = asyncio.run(session())
    assert got["Name"] == "test-line" and got["Health.Running"] is True and got["BundleId"]
    assert got["call"] == ua.StatusCodes.BadUserAccessDenied == got["write"]
    time.sleep(0.2)
    assert line.station.counters.snapshot()[0]["triggers"] == before  # the refused call queued nothing


def test_a_user_inspects_and_each_call_answers_its_own_part(line):
    """Three PLC sessions call Inspect at once; every answer is the recorded verdict of its own trigger."""
    async def plc(n: int) -> list:
        async with client(line.port, "plc", PASSWORD) as c:
            st = await Nodes.of(c)
            return [await st.call("Inspect") for _ in range(n)]

    async def three() -> list:
        return await asyncio.gather(*(plc(8) for _ in range(3)))

    answers = [a for per in asyncio.run(three()) for a in per]
    tids = [a[2] for a in answers]
    assert len(set(tids)) == 24  # none answered twice
    rows = _recorded(line.cfg, tids)
    for verdict, score, tid in answers:
        assert rows[tid][0] == verdict and rows[tid][1] == pytest.approx(score) and rows[tid][2] == "opcua"
    assert len({round(a[1], 6) for a in answers}) > 1  # different parts: a mixed-up answer would show

    async def then_read() -> tuple:
        async with client(line.port, "plc", PASSWORD) as c:
            st = await Nodes.of(c)
            verdict, score, tid = await st.call("Inspect")
            with pytest.raises(ua.UaStatusCodeError) as write:  # every variable is read-only, users' too
                await st.var("LastVerdict").write_value("ok")
            return (verdict, tid, await st.read("LastVerdict"), await st.read("LastTriggerId"),
                    await st.read("Counters.Triggers"), _code(write))

    verdict, tid, last, last_tid, count, write = asyncio.run(then_read())
    assert (last, last_tid) == (verdict, tid)  # when Inspect returns, the variables already show its part
    assert count >= 25 and write == ua.StatusCodes.BadUserAccessDenied


def test_wrong_password_and_unknown_user_are_refused(line):
    async def login(user: str, password: str) -> int:
        with pytest.raises(ua.UaStatusCodeError) as e:
            async with client(line.port, user, password):
                pass
        return _code(e)

    assert asyncio.run(login("plc", "not-the-password")) == ua.StatusCodes.BadUserAccessDenied
    assert asyncio.run(login("intruder", PASSWORD)) == ua.StatusCodes.BadUserAccessDenied


def _garbage(port: int, rng: random.Random) -> None:
    """One connection sending random bytes, sometimes behind a plausible OPC UA header."""
    head = rng.choice([b"", b"HELF", b"MSGF", b"OPNF", b"CLOF", b"ERRF"])
    body = head + rng.randbytes(rng.randint(0, 300))
    if head and rng.random() < 0.5:
        body = head + rng.randint(0, 2 ** 32 - 1).to_bytes(4, "little") + rng.randbytes(rng.randint(0, 64))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(body)


async def _bad_calls(port: int) -> list[int]:
    """Unknown nodes, wrong argument types, unknown methods: each is answered with a Bad status."""
    codes = []
    async with client(port, "plc", PASSWORD) as c:
        st = await Nodes.of(c)
        for path in ("NoSuchVariable", "Counters.Nothing"):
            with pytest.raises(ua.UaStatusCodeError) as e:
                await st.read(path)
            codes.append(_code(e))
        for args in (("seven",), (1.5,), ([1, 2],), (), (1, 2)):
            with pytest.raises(ua.UaStatusCodeError) as e:
                await st.call("SwitchProduct", *args)
            codes.append(_code(e))
        for method, args in (("Inspect", (1,)), ("NoSuchMethod", ())):
            with pytest.raises(ua.UaStatusCodeError) as e:
                await st.call(method, *args)
            codes.append(_code(e))
    return codes


def _slots_free(port: int, timeout: float = 10.0) -> bool:
    """True once a client gets a session: garbage connections hold max_connections until the server
    has seen them close (or, if they stay open, until its activation grace ends)."""
    async def attempt() -> None:
        async with client(port, timeout=2):
            pass

    def ok() -> bool:
        try:
            asyncio.run(attempt())
            return True
        except (OSError, asyncio.TimeoutError, ua.UaError):
            return False

    return wait_for(ok, timeout, step=0.2)


def test_bad_requests_are_answered_and_the_server_keeps_serving(line):
    rng = random.Random(0)
    for _ in range(200):
        _garbage(line.port, rng)
    assert _slots_free(line.port)
    codes = asyncio.run(_bad_calls(line.port))
    assert all(ua.StatusCode(c).is_bad() for c in codes) and len(codes) == 9

    async def still_works() -> list:
        async with client(line.port, "plc", PASSWORD) as c:
            return await (await Nodes.of(c)).call("Inspect")

    t0 = time.monotonic()
    verdict, _, tid = asyncio.run(still_works())
    assert verdict in ("ok", "defect", "retake") and tid > 0 and time.monotonic() - t0 < 5


@pytest.fixture()
def finished_line(tiny_line, tiny_bundle, tmp_path):
    """A station whose one-image replay is used up: a trigger now never gets a verdict."""
    replay = replay_folder(tiny_line, tmp_path / "replay", defects=0, goods=1)
    st = Station(station_config(tmp_path, tiny_bundle, replay, mode="software"))
    st.start()
    st.trigger("software")  # takes the one image: the next trigger finds the replay's end
    assert wait_for(lambda: sum(st.counters.snapshot()[0][k] for k in ("ok", "defect", "retake")) == 1)
    yield st
    st.stop()


def _inspect_code(port: int) -> int:
    async def inspect() -> int:
        async with client(port, "plc", PASSWORD) as c:
            with pytest.raises(ua.UaStatusCodeError) as e:
                await (await Nodes.of(c)).call("Inspect")
            return _code(e)

    return asyncio.run(inspect())


def test_inspect_without_a_verdict_answers_bad_timeout_and_a_stop_answers_bad_shutdown(finished_line):
    port = free_port()
    server = start_opcua(finished_line, OpcUaSettings(host="127.0.0.1", port=port, users={"plc": HASH},
                                                      inspect_timeout_s=0.5))
    try:
        t0 = time.monotonic()
        assert _inspect_code(port) == ua.StatusCodes.BadTimeout
        assert time.monotonic() - t0 < 3.0
    finally:
        server.stop()

    port = free_port()
    server = start_opcua(finished_line, OpcUaSettings(host="127.0.0.1", port=port, users={"plc": HASH},
                                                      inspect_timeout_s=30))
    result: dict = {}
    caller = threading.Thread(target=lambda: result.update(code=_inspect_code(port)))
    caller.start()
    time.sleep(1.5)  # the call is waiting for a verdict that will not come
    t0 = time.monotonic()
    server.stop()
    caller.join(10)
    assert result.get("code") == ua.StatusCodes.BadShutdown and time.monotonic() - t0 < 5


def test_a_trusted_client_certificate_may_call_and_passwords_travel_encrypted(line, tmp_path):
    server_cert, server_key = self_signed(tmp_path / "server", "station", "urn:kenpin:test-line")
    trusted = tmp_path / "trusted"
    cert_a, key_a = self_signed(tmp_path / "a", "cell-4-plc", "urn:test:cell-4-plc")
    trusted.mkdir()
    (trusted / "cell-4-plc.der").write_bytes(cert_a.read_bytes())
    cert_b, key_b = self_signed(tmp_path / "b", "stranger", "urn:test:stranger")
    port = free_port()
    settings = OpcUaSettings(host="127.0.0.1", port=port, security=("sign-and-encrypt",), certificate=str(server_cert),
                             private_key=str(server_key), users={"plc": HASH}, trusted_certs=str(trusted))
    server = start_opcua(line.station, settings)

    async def call(cert, key, uri, user=None) -> object:
        c = await secure(client(port, user, PASSWORD if user else None), cert, key, server_cert, uri)
        async with c:
            try:
                return (await (await Nodes.of(c)).call("Inspect"))[0]
            except ua.UaStatusCodeError as e:
                return e.code

    try:
        assert asyncio.run(call(cert_a, key_a, "urn:test:cell-4-plc")) in ("ok", "defect", "retake")
        assert asyncio.run(call(cert_b, key_b, "urn:test:stranger")) == ua.StatusCodes.BadUserAccessDenied
        assert asyncio.run(call(cert_b, key_b, "urn:test:stranger", "plc")) in ("ok", "defect", "retake")
    finally:
        server.stop()


def test_port_in_use_is_one_sentence_a_nonzero_exit_and_nothing_lost(tiny_line, tiny_bundle, tmp_path, capsys):
    from kenpin.cli import main

    port = free_port()
    config = str(service_config_file(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"),
                                     _opcua_block(port)))
    with socket.create_server(("127.0.0.1", port)):
        assert main(["run", "--config", config, "--duration", "30", "--no-dashboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"opcua.port = {port}" in err[0] and "in use" in err[0], err
    db = sqlite3.connect(tmp_path / "data" / "verdicts.sqlite3")
    rows = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    stops = [json.loads(d) for (d,) in db.execute("SELECT detail FROM audit WHERE event = 'stop'")]
    db.close()
    assert len(stops) == 1  # the station was stopped in order: parts in flight finished and recorded
    c = stops[0]["counters"]
    assert c["ok"] + c["defect"] + c["retake"] == rows


def test_the_service_serves_while_the_station_runs_and_closes_with_it(tiny_line, tiny_bundle, tmp_path):
    port = free_port()
    cfg = station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), loop=True,
                         fps=20, extra=_opcua_block(port))
    st = Station(cfg)
    st.start()
    seen: dict = {}

    async def read() -> None:
        async with client(port) as c:
            st_nodes = await Nodes.of(c)
            await asyncio.sleep(1.5)  # a second of free-run parts
            seen.update(name=await st_nodes.read("Name"), ok=await st_nodes.read("Counters.Triggers"))

    def reader() -> None:
        try:
            assert wait_for(lambda: _listening(port), 30)
            asyncio.run(read())
        finally:  # stop as systemd would; a fixed run length lost the race on a loaded CPU
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=reader)
    t.start()
    # In the main thread (signals); its SIGTERM handler is in place before the OPC UA server listens.
    assert serve(st, cfg, RunOptions(duration_s=120, with_dashboard=False)) == 0
    t.join(10)
    assert seen.get("name") == "test-line" and seen.get("ok", 0) > 0
    assert not _listening(port)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
            # A port from the ephemeral range can connect to itself while nobody listens (TCP
            # simultaneous open): that is no server.
            return c.getsockname() != c.getpeername()
    except OSError:
        return False


def test_a_plc_connecting_while_the_station_checks_its_port_is_not_taken_in_and_dropped():
    """CI once saw a client reset in its Hello: it had connected to the port check's socket, which then closed."""
    port = free_port()
    settings, accepted, done = OpcUaSettings(host="127.0.0.1", port=port), [], threading.Event()

    def plc() -> None:
        while not done.is_set():
            if _listening(port):
                accepted.append(1)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches between any two steps of the check, as on a loaded CPU
    t = threading.Thread(target=plc)
    t.start()
    try:
        for _ in range(3000):
            _check_port(settings, "")
    finally:
        done.set()
        t.join()
        sys.setswitchinterval(old)
    assert not accepted


def test_config_mistakes_name_the_key_and_never_echo_a_password():
    with pytest.raises(KenpinError) as e:
        parse_config("opcua:\n  users:\n    plc: hunter2-secret\n", "s.yaml")
    assert "s.yaml, line 3: opcua.users.plc" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(KenpinError, match=r"s\.yaml: opcua\.certificate = '': is needed by the sign"):
        parse_config("opcua:\n  security: [sign-and-encrypt]\n", "s.yaml")
    with pytest.raises(KenpinError, match=r"line 2: opcua\.anonymous"):
        parse_config("opcua:\n  anonymous: none\n", "s.yaml")
    assert parse_config("opcua: {port: 4841}\n", "s.yaml").opcua.port == 4841


def test_kenpin_bench_opcua_measures_every_figure(tiny_line, tiny_bundle, tmp_path, capsys):
    """A short run of the benchmark: it checks every answer against the record and prints the table.
    (Its exit status also judges the throughput figure, which a short run on a shared CPU cannot.)"""
    from device.bench.durability import mixed_replay
    from kenpin.cli import main

    replay = mixed_replay(tiny_line, tmp_path / "replay")
    main(["bench", "opcua", "--bundle", str(tiny_bundle), "--replay", str(replay), "--workdir", str(tmp_path / "run"),
          "--parts", "20", "--bad", "40", "--seconds", "4", "--rounds", "1", "--port", str(free_port())])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    i, b = report["inspect"], report["bad_requests"]
    assert (i["answered"], i["lost"], i["doubled"], i["not_its_own"]) == (20, 0, 0, 0)
    assert i["inspect_ms"]["p99"] and i["station_ms"]["p99"]
    assert b["server_alive"] and b["inspect_after"] == 5 and b["longest_gap_s"] < 1.0
    assert not any("good" in k for k in b["answers"]) and sum(b["answers"].values()) == 40
    assert report["polling"]["reads_per_s"] > 50
    assert "| 20 parts through Inspect()" in capsys.readouterr().out


def test_a_user_switches_products_and_an_unknown_number_is_refused(tiny_line, tiny_bundle, tmp_path):
    from device.bench.products import product_copy

    nut = product_copy(tiny_bundle, tmp_path / "nut", "nut")
    port = free_port()
    extra = (f"products:\n  - {{number: 1, name: bolt, bundle: {tiny_bundle}}}\n"
             f"  - {{number: 2, name: nut, bundle: {nut}}}\n" + _opcua_block(port) + "\n")
    cfg = station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), loop=True,
                         mode="software", extra=extra)
    st = Station(cfg)
    st.start()
    server = start_opcua(st, cfg.opcua)

    async def plc() -> tuple:
        async with client(port, "plc", PASSWORD) as c:
            nodes = await Nodes.of(c)
            switched = await nodes.call("SwitchProduct", ua.Variant(2, ua.VariantType.Int32))
            verdict, score, tid = await nodes.call("Inspect")
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await nodes.call("SwitchProduct", ua.Variant(9, ua.VariantType.Int32))
            return switched, tid, await nodes.read("ActiveProduct"), _code(refused)

    try:
        switched, tid, active, refused = asyncio.run(plc())
        assert switched == 2 and active == 2 and st.active_product.number == 2  # no product 9: stays on 2
        assert refused == ua.StatusCodes.BadInvalidArgument
        rec = next(r for r in st.store.query(20) if r.trigger_id == tid)
        assert rec.product == 2 and rec.bundle_id == st.active_product.bundle_id
        switch = next(a for a in st.store.audit_log() if a["event"] == "product_switch")
        assert switch["who"].startswith("opcua") and "plc" in switch["who"]
    finally:
        st.stop()
        server.stop()
