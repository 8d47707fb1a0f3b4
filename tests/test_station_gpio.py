"""GPIO part-present trigger and reject/ok outputs, on gpiozero's mock pin factory."""
from __future__ import annotations

import time

import pytest

from device.station.actuator import GpioActuator
from device.station.actuator import ActuatorSection
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config, wait_for

mock = pytest.importorskip("gpiozero.pins.mock")


@pytest.fixture()
def factory():
    f = mock.MockFactory()
    yield f
    f.reset()


def _pulses(pin) -> list[float]:
    """Lengths (s) of the high pulses a mock pin went through (its timestamps are deltas)."""
    states = pin.states
    return [b.timestamp for a, b in zip(states, states[1:]) if a.state and not b.state]


def test_actuator_pulses_reject_and_ok_lines_with_delay(factory):
    act = GpioActuator(ActuatorSection(type="gpio", reject_pin="GPIO27", ok_pin="GPIO22", pulse_ms=30, delay_ms=150),
                       pin_factory=factory)
    reject, ok = factory.pin(27), factory.pin(22)
    t0 = time.monotonic()
    act.fire("defect")
    time.sleep(0.02)
    assert not reject.state  # still travelling to the ejector
    assert wait_for(lambda: reject.state, 1.0, 0.001)
    assert time.monotonic() - t0 >= 0.149
    act.fire("ok")
    act.fire("retake")
    act.close()  # finishes scheduled pulses first
    pulses = _pulses(reject)
    assert len(pulses) == 2 and all(0.029 <= p < 0.1 for p in pulses), pulses  # slack: a busy CI machine
    assert len(_pulses(ok)) == 1 and not reject.state and not ok.state


def test_gpio_sensor_triggers_verdicts_and_defects_pulse_reject(tiny_line, tiny_bundle, tmp_path, factory):
    replay = replay_folder(tiny_line, tmp_path / "replay")
    cfg = station_config(tmp_path, tiny_bundle, replay, mode="gpio", loop=True,
                         extra="actuator: {type: gpio, reject_pin: GPIO27, pulse_ms: 5}\n"
                               "trigger: {mode: gpio, gpio_pin: GPIO17, gpio_bounce_ms: 0}")
    st = Station(cfg, pin_factory=factory)
    st.start()
    sub = st.subscribe()
    sensor = factory.pin(17)
    try:
        for _ in range(6):
            sensor.drive_high()
            time.sleep(0.01)
            sensor.drive_low()
            time.sleep(0.01)
        recs = [sub.get(timeout=10) for _ in range(6)]
    finally:
        st.stop()
    assert [r.trigger_source for r in recs] == ["gpio"] * 6
    assert [r.trigger_id for r in recs] == list(range(1, 7))
    defects = sum(r.verdict != "ok" for r in recs)
    assert len(_pulses(factory.pin(27))) == defects


def test_each_part_is_pulsed_with_its_own_products_timing(tiny_line, tiny_bundle, tmp_path, factory):
    # every part a defect (threshold near 0): bolt pulses 5 ms (the actuator's), nut its own 80 ms
    replay = replay_folder(tiny_line, tmp_path / "replay")
    cfg = station_config(tmp_path, tiny_bundle, replay, mode="software", loop=True,
                         extra="actuator: {type: gpio, reject_pin: GPIO27, pulse_ms: 5}\n"
                               f"products:\n  - {{number: 1, name: bolt, bundle: {tiny_bundle}, threshold: 0.000001}}\n"
                               f"  - {{number: 2, name: nut, bundle: {tiny_bundle}, threshold: 0.000001, pulse_ms: 80}}\n")
    st = Station(cfg, pin_factory=factory)
    st.start()
    sub = st.subscribe()
    try:
        for number in (1, 1, 2, 2):
            st.switch_product(number, who="plc")
            st.trigger()
            assert sub.get(timeout=10).product == number
            time.sleep(0.15)  # one pulse at a time on the one reject line
    finally:
        st.stop()
    pulses = _pulses(factory.pin(27))
    assert len(pulses) == 4 and all(p < 0.05 for p in pulses[:2]) and all(0.079 <= p < 0.2 for p in pulses[2:]), pulses
