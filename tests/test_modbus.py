"""The Modbus TCP server against pymodbus's own client on loopback, on the tiny line's station.

What a PLC programmer would notice: one verdict per rising edge of the trigger, the result there
before result_ready rises, the acknowledgement clearing it; writes refused when the station is
read-only; a client outside the allow-list or over the limit shut out; garbage on the wire
answered or dropped while the station goes on; a taken port named in one sentence.
"""
from __future__ import annotations

import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from device.errors import KenpinError
from device.station.config import parse_config
from device.station.modbus import ModbusServer, check_port
from device.station.modbus_map import COILS, INPUT_REGISTERS, REGISTER_MAP, Entry, ErrorCode, Layout, Result
from device.station.modbus_plc import NotReady, PlcImage
from device.station.modbus_settings import ModbusSettings
from device.station.record import VerdictRecord
from device.station.service import RunOptions, serve
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config, wait_for

UNIT = 1
SHUT_OUT = (ModbusException, ConnectionError)  # what a client sees of a connection closed at once
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(**kw) -> ModbusSettings:
    return ModbusSettings(**{"host": "127.0.0.1", "port": free_port(), **kw})


@pytest.fixture(scope="module")
def station(tiny_line, tiny_bundle, tmp_path_factory):
    """One software-triggered station for the module (its servers come and go)."""
    tmp = tmp_path_factory.mktemp("modbus")
    st = Station(station_config(tmp, tiny_bundle, replay_folder(tiny_line, tmp / "replay"), loop=True,
                                mode="software"))
    st.start()
    yield st
    st.stop()


@pytest.fixture
def server(station):
    srv = ModbusServer(station, settings()).start()
    yield srv
    srv.stop()


def client(srv: ModbusServer) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=srv.settings.port, timeout=2, retries=0)
    assert c.connect()
    return c


def bits(c: ModbusTcpClient) -> dict[str, bool]:
    r = c.read_discrete_inputs(0, count=5, device_id=UNIT)
    return dict(zip(("ready", "busy", "result_ready", "error", "running"), r.bits))


def results(c: ModbusTcpClient) -> dict[str, int]:
    regs = c.read_input_registers(0, count=15, device_id=UNIT).registers
    return {"result": regs[0], "score_x1000": regs[1], "latency_ms": regs[2], "error_code": regs[3],
            "result_seq": regs[4], "part_count": regs[5] << 16 | regs[6]}


def cycle(c: ModbusTcpClient, timeout: float = 10.0) -> dict[str, int]:
    """One part, the documented way: trigger up (ack down), wait result_ready, read, ack (trigger down)."""
    seq = results(c)["result_seq"]
    assert not c.write_coils(0, [True, False], device_id=UNIT).isError()
    deadline = time.monotonic() + timeout
    while not bits(c)["result_ready"]:
        assert time.monotonic() < deadline, "no result_ready"
    res = results(c)  # read right after result_ready was seen: already the new answer
    assert res["result_seq"] == (seq + 1) & 0xFFFF
    assert not c.write_coils(0, [False, True], device_id=UNIT).isError()
    return res


def modbus_rows(station: Station) -> list[tuple[int, str]]:
    db = sqlite3.connect(station.config.station.data_dir / "verdicts.sqlite3")
    try:
        return db.execute("SELECT trigger_id, verdict FROM verdicts WHERE trigger_source = 'modbus' "
                          "ORDER BY trigger_id").fetchall()
    finally:
        db.close()


def test_one_verdict_per_rising_edge_result_before_ready_and_ack_clears(station, server):
    c = client(server)
    assert wait_for(lambda: bits(c)["ready"] and bits(c)["running"], 5)
    before = len(modbus_rows(station))
    answers = [cycle(c) for _ in range(6)]
    assert bits(c) == {"ready": True, "busy": False, "result_ready": False, "error": False, "running": True}
    # Holding the trigger high is no new edge; only the next 0 → 1 is.
    assert not c.write_coils(0, [True, False], device_id=UNIT).isError()
    assert wait_for(lambda: bits(c)["result_ready"], 10)
    assert not c.write_coil(0, True, device_id=UNIT).isError()  # still high: nothing happens
    assert not c.write_coil(1, True, device_id=UNIT).isError()  # ack: result_ready falls
    time.sleep(0.3)
    assert not bits(c)["busy"] and not bits(c)["result_ready"]
    c.write_coils(0, [False, False], device_id=UNIT)
    assert wait_for(lambda: len(modbus_rows(station)) == before + 7, 10)
    time.sleep(0.3)
    rows = modbus_rows(station)[before:]
    assert len(rows) == 7 and len({t for t, _ in rows}) == 7  # none lost, none doubled
    verdict_code = {"ok": Result.OK, "defect": Result.NG, "retake": Result.RETAKE}
    assert [a["result"] for a in answers] == [verdict_code[v] for _, v in rows[:6]]
    assert all(a["error_code"] == 0 for a in answers) and answers[-1]["part_count"] >= 6
    c.close()


def test_a_trigger_while_not_ready_is_refused_with_busy(station, server):
    c = client(server)
    assert wait_for(lambda: bits(c)["ready"], 5)
    c.write_coils(0, [True, False], device_id=UNIT)
    assert wait_for(lambda: bits(c)["result_ready"], 10)
    c.write_coil(0, False, device_id=UNIT)
    r = c.write_coil(0, True, device_id=UNIT)  # a new edge, but the result is not acknowledged
    assert r.isError() and r.exception_code == 6
    assert results(c)["error_code"] == ErrorCode.NOT_READY and bits(c)["error"]
    assert c.read_coils(0, count=1, device_id=UNIT).bits[0] is False  # refused: nothing applied
    c.write_coils(0, [True, True], device_id=UNIT)  # ack and trigger in one write: ack first, accepted
    assert wait_for(lambda: bits(c)["result_ready"], 10)
    assert results(c)["error_code"] == 0
    c.write_coils(0, [False, False], device_id=UNIT)
    c.close()


def test_the_result_registers_are_written_before_result_ready_rises():
    order: list[str] = []

    class Recording(dict):
        def __setitem__(self, key, value):
            order.append(f"{key}={value}")
            super().__setitem__(key, value)

    image = PlcImage(Layout(), result_timeout_s=5)
    image.values = Recording(image.values)
    image.tick(True, {}, 0)
    image.write_coils(0, [True], lambda: 41)
    order.clear()
    rec = VerdictRecord(time.time(), "s", "b", "defect", 0.8, 0.5, 2.0, 1.0, None, 7.0, "modbus", trigger_id=41)
    assert image.verdict(rec, {"defect": 1})
    ready_at = order.index("result_ready=1")
    for name in ("result=2", "score_x1000=800", "latency_ms=7", "result_seq=1", "ng_count=1"):
        assert order.index(name) < ready_at, (name, order)


def test_no_verdict_in_time_is_answered_error_and_a_late_one_is_not_taken():
    now = [0.0]
    image = PlcImage(Layout(), result_timeout_s=2, clock=lambda: now[0])
    image.tick(True, {}, 0)
    image.write_coils(0, [True], lambda: 7)
    now[0] = 2.5
    image.tick(True, {}, 0)
    v = image.values
    assert (v["result"], v["error_code"], v["result_ready"], v["busy"], v["error"]) == (Result.ERROR,
                                                                                      ErrorCode.NO_VERDICT, 1, 0, 1)
    late = VerdictRecord(0.0, "s", "b", "ok", 0.1, 0.5, 1.0, 1.0, None, 5.0, "modbus", trigger_id=7)
    assert not image.verdict(late, {}) and v["result"] == Result.ERROR and image.stats.late == 1
    image.write_coils(0, [False, True], lambda: None)  # ack
    image.write_coils(0, [True, False], lambda: None)  # the station's queue refuses this one
    assert (v["result"], v["error_code"], v["result_ready"]) == (Result.ERROR, ErrorCode.TRIGGER_REFUSED, 1)
    image.write_coils(0, [False], lambda: None)
    with pytest.raises(NotReady):  # result not acknowledged
        image.write_coils(0, [True], lambda: 8)


def test_read_only_refuses_every_write_with_an_exception(station):
    srv = ModbusServer(station, settings(writes=False)).start()
    try:
        c = client(srv)
        triggers = station.counters.snapshot()[0]["triggers"]
        for r in (c.write_coil(0, True, device_id=UNIT), c.write_coils(0, [True, True], device_id=UNIT),
                  c.write_register(0, 3, device_id=UNIT), c.write_registers(0, [3], device_id=UNIT)):
            assert r.isError() and r.exception_code == 1
        assert not c.read_input_registers(0, count=15, device_id=UNIT).isError()  # reading goes on
        time.sleep(0.3)
        assert station.counters.snapshot()[0]["triggers"] == triggers
        c.close()
    finally:
        srv.stop()


def test_allow_list_and_connection_limit_shut_clients_out(station):
    srv = ModbusServer(station, settings(allowed_clients=("10.9.8.7", "192.168.0.0/16"))).start()
    try:
        c = ModbusTcpClient("127.0.0.1", port=srv.settings.port, timeout=1, retries=0)
        c.connect()
        with pytest.raises(SHUT_OUT):  # closed at once: no answer
            c.read_input_registers(0, count=1, device_id=UNIT)
        c.close()
        assert wait_for(lambda: srv.refused_connections == 1, 3)
    finally:
        srv.stop()
    srv = ModbusServer(station, settings(allowed_clients=("127.0.0.0/8",), max_connections=1)).start()
    try:
        first = client(srv)
        assert not first.read_input_registers(0, count=1, device_id=UNIT).isError()
        second = ModbusTcpClient("127.0.0.1", port=srv.settings.port, timeout=1, retries=0)
        second.connect()
        with pytest.raises(SHUT_OUT):
            second.read_input_registers(0, count=1, device_id=UNIT)
        second.close()
        assert not first.read_input_registers(0, count=1, device_id=UNIT).isError()  # the first is untouched
        first.close()
        assert srv.refused_connections == 1
    finally:
        srv.stop()


def test_other_unit_ids_and_unmapped_addresses_get_exceptions(server):
    c = client(server)
    r = c.read_input_registers(0, count=1, device_id=UNIT + 1)
    assert r.isError() and r.exception_code == 0x0B
    r = c.read_input_registers(14, count=2, device_id=UNIT)  # past the last register
    assert r.isError() and r.exception_code == 2
    r = c.write_coil(5, True, device_id=UNIT)  # inside the coils' 16-bit word, but no coil of the map
    assert r.isError() and r.exception_code == 2
    c.close()


def test_a_connection_without_valid_requests_is_closed_after_the_idle_time(station):
    srv = ModbusServer(station, settings(idle_timeout_s=0.3)).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.settings.port), timeout=3) as s:
            s.sendall(b"\x00\x01\x12\x34")  # a fragment that never becomes a frame
            assert wait_for(lambda: srv.connections == 1, 2)
            assert s.recv(16) == b""  # closed by the server
        assert srv.connections == 0
        c = client(srv)  # a polling client is not idle
        for _ in range(8):
            assert not c.read_discrete_inputs(0, count=5, device_id=UNIT).isError()
            time.sleep(0.1)
        c.close()
    finally:
        srv.stop()


def _garbage(rng: random.Random) -> bytes:
    """One malformed frame: random bytes, a wrong length, an unknown function code, a bad protocol id."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    tid = rng.randrange(65536).to_bytes(2, "big")
    if kind == 1:  # length field says more (or less) than follows
        return tid + b"\x00\x00" + rng.randrange(65536).to_bytes(2, "big") + bytes([UNIT, 3, 0, 0, 0, 1])
    if kind == 2:  # unknown function code
        return tid + b"\x00\x00\x00\x04" + bytes([UNIT, rng.choice([0, 9, 0x29, 0x41, 0x64, 0x7F]), 0, 0])
    if kind == 3:  # protocol id not 0
        return tid + b"\x12\x34\x00\x06" + bytes([UNIT, 4, 0, 0, 0, 1])
    return tid + b"\x00\x00\x00\x06" + bytes([UNIT, 4]) + rng.randbytes(4)  # valid shape, random address/count


def test_malformed_frames_do_not_kill_the_server_or_stop_the_station(station, server):
    rng, sent, answered = random.Random(0), 0, 0
    c = client(server)
    c.write_coils(0, [True, False], device_id=UNIT)  # a part in flight through the fuzz
    for _ in range(8):
        with socket.create_connection(("127.0.0.1", server.settings.port), timeout=1) as s:
            s.settimeout(0.02)
            for _ in range(40):
                try:
                    s.sendall(_garbage(rng))
                    sent += 1
                    answered += len(s.recv(512)) > 0
                except (socket.timeout, ConnectionError):
                    continue
    assert sent >= 300 and answered > 0
    assert wait_for(lambda: bits(c)["result_ready"], 10)  # the part got its answer
    c.write_coils(0, [False, True], device_id=UNIT)
    assert cycle(c)["result"] in (Result.OK, Result.NG, Result.RETAKE)  # and the next one
    assert station.running
    c.close()


def test_register_map_has_no_collisions_and_a_collision_names_both():
    layout = Layout()
    assert layout.size(COILS) == 2 and layout.size(INPUT_REGISTERS) == 15
    clash = REGISTER_MAP + (Entry("shift_count", INPUT_REGISTERS, 6, "a counter", words=2),)
    with pytest.raises(KenpinError, match=r"shift_count \(input register 6\) collides with part_count "
                                          r"\(input register 5\)"):
        Layout(clash)
    same_name = REGISTER_MAP + (Entry("trigger", COILS, 9, "again"),)
    with pytest.raises(KenpinError, match="two entries are named 'trigger'"):
        Layout(same_name)


def test_the_readme_map_is_the_one_the_code_serves(capsys):
    from kenpin.cli import main

    assert main(["modbus-map"]) == 0
    printed = capsys.readouterr().out
    assert printed == Layout().markdown()
    assert printed in (ROOT / "README.md").read_text(), "README.md's map is stale: paste `kenpin modbus-map`"


def test_the_modbus_section_is_typed_and_named_with_its_line():
    cfg = parse_config("modbus:\n  port: 1502\n  allowed_clients: [192.168.10.5, 10.0.0.0/8]\n  writes: false\n",
                       "st.yaml")
    assert cfg.modbus.port == 1502 and not cfg.modbus.writes and cfg.modbus.allows("10.1.2.3")
    assert not cfg.modbus.allows("192.168.10.6") and cfg.modbus.allows("::ffff:192.168.10.5")
    assert parse_config("station: {name: a}\n", "st.yaml").modbus is None
    with pytest.raises(KenpinError, match=r"st.yaml, line 3: modbus\.allowed_clients = 'plc-1'"):
        parse_config("modbus:\n  port: 1502\n  allowed_clients: [plc-1]\n", "st.yaml")
    with pytest.raises(KenpinError, match=r"line 2: modbus\.port = 0: must be 1 to 65535"):
        parse_config("modbus:\n  port: 0\n", "st.yaml")


def test_a_port_in_use_is_one_sentence_and_nothing_recorded_is_lost(station, tiny_line, tiny_bundle, tmp_path,
                                                                   capsys):
    from kenpin.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(KenpinError, match=rf"^modbus\.port = {port}: port {port} on 127\.0\.0\.1 is already "
                                              r"in use by another program"):
            check_port(ModbusSettings(host="127.0.0.1", port=port))
        # kenpin run: one sentence, exit 2, before the camera or the record is opened
        (tmp_path / "st.yaml").write_text(f"station: {{data_dir: {tmp_path / 'run'}}}\n"
                                          f"modbus: {{host: 127.0.0.1, port: {port}}}\n")
        assert main(["run", "--config", str(tmp_path / "st.yaml")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"kenpin: error: modbus.port = {port}: port {port} on 127.0.0.1 is already in use by "
                       "another program; stop it or choose another modbus.port"]
        assert not (tmp_path / "run").exists()
        # The service: a free-running station is up when the port is found taken; it stops, and
        # every part it judged meanwhile is in the record.
        cfg = station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), loop=True)
        cfg = replace(cfg, modbus=ModbusSettings(host="127.0.0.1", port=port))
        st = Station(cfg)
        st.start()
        assert wait_for(lambda: st.counters.snapshot()[0]["ok"] > 0, 20)
        with pytest.raises(KenpinError, match=f"modbus.port = {port}"):
            serve(st, cfg, RunOptions(with_dashboard=False))
    assert not st.running
    c = st.counters.snapshot()[0]
    db = sqlite3.connect(cfg.station.data_dir / "verdicts.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == c["ok"] + c["defect"] + c["retake"]
    db.close()


def test_the_service_starts_the_server_and_stopping_stops_it(tiny_line, tiny_bundle, tmp_path):
    cfg = station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), loop=True)
    cfg = replace(cfg, modbus=settings())
    st = Station(cfg)
    st.start()
    seen: list[dict] = []

    def plc() -> None:
        c = ModbusTcpClient("127.0.0.1", port=cfg.modbus.port, timeout=1, retries=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (seen and seen[-1]["part_count"] > 0):
            if c.connect():
                seen.append(results(c))
            time.sleep(0.1)
        c.close()

    t = threading.Thread(target=plc)
    t.start()
    assert serve(st, cfg, RunOptions(duration_s=3, with_dashboard=False)) == 0
    t.join()
    assert seen and seen[-1]["part_count"] > 0  # the free-running station's parts, counted over Modbus
    check_port(cfg.modbus)  # released: free again


def test_the_server_and_its_benchmark_load_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import device.station.modbus, device.bench.modbus, device.bench.modbus_plc\n"
            "from kenpin.cli import main; assert main(['modbus-map']) == 0")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_plc_switches_products_through_the_holding_register_and_an_unknown_number_is_refused(
        tiny_bundle, tiny_line, tmp_path):
    from device.bench.products import product_copy

    nut = product_copy(tiny_bundle, tmp_path / "nut", "nut")
    extra = (f"products:\n  - {{number: 1, name: bolt, bundle: {tiny_bundle}}}\n"
             f"  - {{number: 2, name: nut, bundle: {nut}, threshold: 0.6}}\n")
    st = Station(station_config(tmp_path, tiny_bundle, replay_folder(tiny_line, tmp_path / "replay"), loop=True,
                                mode="software", extra=extra))
    st.start()
    srv = ModbusServer(st, settings()).start()
    try:
        c = client(srv)
        assert wait_for(lambda: bits(c)["ready"], 5)
        assert c.read_holding_registers(0, count=1, device_id=UNIT).registers == [1]
        assert not c.write_register(0, 2, device_id=UNIT).isError()
        assert st.active_product.number == 2 and c.read_holding_registers(0, count=1, device_id=UNIT).registers == [2]
        cycle(c)  # a part triggered now is judged as the nut
        assert wait_for(lambda: bool(st.store.query(5)), 10)
        rec = st.store.query(1)[0]
        assert rec.trigger_source == "modbus" and rec.product == 2 and rec.bundle_id == st.active_product.bundle_id
        switch = next(a for a in st.store.audit_log() if a["event"] == "product_switch")
        assert switch["who"].startswith("modbus 127.0.0.1")
        refused = c.write_register(0, 9, device_id=UNIT)  # no product 9: refused, the station stays on 2
        assert refused.isError() and refused.exception_code == 3
        assert st.active_product.number == 2 and results(c)["error_code"] == ErrorCode.PRODUCT_REFUSED
        refusal = next(a for a in st.store.audit_log() if a["event"] == "product_switch_refused")  # as code 4 says
        assert refusal["who"].startswith("modbus 127.0.0.1") and refusal["detail"]["to"] == 9
        c.close()
    finally:
        srv.stop()
        st.stop()
