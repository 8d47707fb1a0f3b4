"""The reject (and optional ok) output: a pulse on a GPIO line via gpiozero, or nothing.

Parts travel from the camera to the ejector, so a pulse starts ``delay_ms`` after the verdict
and lasts ``pulse_ms``; a product may set its own (its parts' timing is passed with each verdict).
Pulses are scheduled on one timer thread in order, so a slow pulse never holds up the recorder.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from device.errors import KenpinError
from device.schema import need

log = logging.getLogger("kenpin.station.actuator")


@dataclass(frozen=True)
class ActuatorSection:
    """The ``actuator:`` section: which output signals verdicts, and the pulse's timing."""

    type: str = "none"
    reject_pin: str = "GPIO27"
    ok_pin: str = ""
    pulse_ms: float = 50.0
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        need(self.type in ACTUATORS, "type", self.type, f"must be one of {tuple(ACTUATORS)}")
        need(self.pulse_ms > 0, "pulse_ms", self.pulse_ms, "must be positive")
        need(self.delay_ms >= 0, "delay_ms", self.delay_ms, "must be 0 or positive")


class NullActuator:
    """No output wired: verdicts are recorded and shown, nothing is signalled."""

    pulses = 0

    def __init__(self, cfg: ActuatorSection | None = None, pin_factory: Any = None) -> None:
        """Nothing to open (the same signature as every actuator in ACTUATORS)."""

    def fire(self, verdict: str, pulse_ms: float | None = None, delay_ms: float | None = None) -> None:
        """Ignore the verdict."""

    def close(self) -> None:
        """Nothing to release."""


class GpioActuator:
    """Pulses the reject line for ``defect`` and ``retake``, and the ok line (if wired) for ``ok``."""

    def __init__(self, cfg: ActuatorSection, pin_factory: Any = None) -> None:
        try:
            from gpiozero import DigitalOutputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError:
            raise KenpinError("actuator.type = gpio: gpiozero is not installed; pip install 'kenpin[pi]'") from None
        self.delay_s, self.pulse_s = cfg.delay_ms / 1000.0, cfg.pulse_ms / 1000.0
        self._longest_s = self.delay_s + self.pulse_s  # how long close() may wait for the last pulse
        try:
            self.reject = DigitalOutputDevice(cfg.reject_pin, initial_value=False, pin_factory=pin_factory)
            self.ok = (DigitalOutputDevice(cfg.ok_pin, initial_value=False, pin_factory=pin_factory)
                       if cfg.ok_pin else None)
        except (GPIOZeroError, ValueError) as e:
            raise KenpinError(f"actuator: pin {cfg.reject_pin!r}/{cfg.ok_pin!r} cannot be used as an output ({e})") from None
        self.pulses = 0
        self._events: list[tuple[float, int, Any, float | None]] = []  # (when, seq, device, pulse s: on / None: off)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="actuator", daemon=True)
        self._thread.start()

    def fire(self, verdict: str, pulse_ms: float | None = None, delay_ms: float | None = None) -> None:
        """Schedule the pulse for this verdict (call after the verdict was recorded); ``pulse_ms`` and
        ``delay_ms`` are its product's timing (None: the section's)."""
        device = self.reject if verdict in ("defect", "retake") else self.ok
        if device is None:
            return
        delay_s = self.delay_s if delay_ms is None else delay_ms / 1000.0
        pulse_s = self.pulse_s if pulse_ms is None else pulse_ms / 1000.0
        with self._cond:
            self._longest_s = max(self._longest_s, delay_s + pulse_s)
            heapq.heappush(self._events, (time.monotonic() + delay_s, next(self._seq), device, pulse_s))
            self.pulses += 1
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed or self._events:
                if not self._events:
                    self._cond.wait()
                    continue
                when, _, device, pulse_s = self._events[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._events)
                device.value = pulse_s is not None
                if pulse_s is not None:  # timed from when the line really went high, so a late start never shortens it
                    heapq.heappush(self._events, (time.monotonic() + pulse_s, next(self._seq), device, None))

    def close(self) -> None:
        """Finish the scheduled pulses, then release the lines (left off)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=self._longest_s + 1.0)
        for device in (self.reject, self.ok):
            if device is not None:
                device.off()
                device.close()


# Outputs by ``actuator.type``; a new one is a class taking (section, pin_factory) with fire() and close().
ACTUATORS: dict[str, type] = {"none": NullActuator, "gpio": GpioActuator}


def make_actuator(cfg: ActuatorSection, pin_factory: Any = None) -> Any:
    """The actuator the ``actuator`` section names."""
    return ACTUATORS[cfg.type](cfg, pin_factory)
