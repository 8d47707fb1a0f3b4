"""Triggers: when a frame is inspected.

Free-run inspects every N-th frame and/or at most ``rate_hz``; frames it cannot take because
inference is busy are skipped and counted. Software and GPIO triggers ("a part is here") go into
a TriggerQueue; each gets exactly one verdict. The queue is bounded (``max_backlog``): a trigger
beyond it is refused and counted as a trigger error, never silently dropped. Each trigger is bound,
as it is queued, to what the station says its part is judged with (the active product). With
``burst`` N a trigger takes N camera frames and the quality gate's best is judged
(:mod:`device.station.burst`).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from device.errors import KenpinError
from device.schema import need

log = logging.getLogger("kenpin.station.triggers")


@dataclass(frozen=True)
class Trigger:
    """One request for a verdict."""

    id: int
    source: str  # "software" | "gpio" | "modbus" | "opcua" (record.TRIGGER_SOURCES)
    time: float  # unix seconds
    bound: Any = None  # the queue's ``bind()`` when queued (the station's product binding); None: bind at capture


class TriggerQueue:
    """Pending triggers in arrival order; thread-safe; reports its backlog.

    ``bind`` is called under the queue's lock for each trigger queued and its result kept with it,
    so whatever an input (GPIO, HTTP, a PLC server) queues carries the product active at that moment.
    """

    def __init__(self, max_backlog: int, bind: Callable[[], Any] | None = None) -> None:
        self.max_backlog = max_backlog
        self._bind = bind
        self._pending: collections.deque[Trigger] = collections.deque()
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self.accepted = 0
        self.refused = 0
        self.max_seen = 0

    def put(self, source: str) -> int:
        """Queue a trigger; returns its id. A full queue refuses it (counted, logged, id returned)."""
        with self._lock:
            trigger = Trigger(next(self._ids), source, time.time(), self._bind() if self._bind else None)
            if len(self._pending) >= self.max_backlog:
                self.refused += 1
                log.error("trigger %d (%s) refused: backlog full at %d", trigger.id, source, self.max_backlog)
                return trigger.id
            self._pending.append(trigger)
            self.accepted += 1
            self.max_seen = max(self.max_seen, len(self._pending))
            self._lock.notify_all()
            return trigger.id

    def pop(self) -> Trigger | None:
        """The oldest pending trigger, or None."""
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def wait(self, timeout: float) -> bool:
        """Block until a trigger is pending or ``timeout`` passes; True if one is pending."""
        with self._lock:
            return self._lock.wait_for(lambda: bool(self._pending), timeout)

    def __len__(self) -> int:
        return len(self._pending)


class FreeRun:
    """Decides which captured frames free-run mode inspects."""

    def __init__(self, every_n: int, rate_hz: float) -> None:
        self.every_n, self.period = every_n, (1.0 / rate_hz if rate_hz > 0 else 0.0)
        self._count = 0
        self._next_due = 0.0

    def due(self, now: float) -> bool:
        """True for the frames to inspect (call once per captured frame)."""
        self._count += 1
        if self._count % self.every_n:
            return False
        if self.period:
            if now < self._next_due:
                return False
            self._next_due = max(self._next_due + self.period, now)
        return True


class GpioTrigger:
    """A part-present sensor on a GPIO input (gpiozero): each activation queues a trigger."""

    def __init__(self, cfg: TriggerSection, queue: TriggerQueue, pin_factory: Any = None) -> None:
        try:
            from gpiozero import DigitalInputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError:
            raise KenpinError("trigger.mode = gpio: gpiozero is not installed; pip install 'kenpin[pi]'") from None
        try:
            self.device = DigitalInputDevice(cfg.gpio_pin, pull_up=cfg.gpio_pull_up,
                                             bounce_time=cfg.gpio_bounce_ms / 1000.0 or None,
                                             pin_factory=pin_factory)
        except (GPIOZeroError, ValueError) as e:
            raise KenpinError(f"trigger.gpio_pin = {cfg.gpio_pin!r}: cannot be used as an input ({e})") from None
        self.device.when_activated = lambda *_: queue.put("gpio")

    def close(self) -> None:
        self.device.close()


# Trigger inputs that queue "a part is here" from outside the station, by ``trigger.mode``; a new
# kind of input is one class taking (section, queue, pin_factory) with a close(), listed here.
TRIGGER_INPUTS: dict[str, type] = {"gpio": GpioTrigger}
BUILT_IN_MODES = ("free-run", "software")  # free-run: the capture loop decides; software: HTTP /trigger


def trigger_modes() -> tuple[str, ...]:
    """Every value ``trigger.mode`` may take."""
    return BUILT_IN_MODES + tuple(TRIGGER_INPUTS)


# The longest burst: each frame of it is a camera frame the part waits for (10 at 30 fps: a third of
# a second), and past a few frames a line that needs more has a capture problem to fix, not to outvote.
MAX_BURST = 10


@dataclass(frozen=True)
class TriggerSection:
    """The ``trigger:`` section: when a frame is inspected (``gpio_*`` keys: the GPIO input)."""

    mode: str = "free-run"
    every_n: int = 1
    rate_hz: float = 0.0
    gpio_pin: str = "GPIO17"
    gpio_pull_up: bool = False
    gpio_bounce_ms: float = 5.0
    max_backlog: int = 100000
    burst: int = 1  # triggered modes: frames taken per trigger; the quality gate's best of them is judged

    def __post_init__(self) -> None:
        need(self.mode in trigger_modes(), "mode", self.mode, f"must be one of {trigger_modes()}")
        need(self.every_n >= 1, "every_n", self.every_n, "must be 1 or more")
        need(self.rate_hz >= 0, "rate_hz", self.rate_hz, "must be 0 (off) or positive")
        need(self.max_backlog >= 1, "max_backlog", self.max_backlog, "must be 1 or more")
        need(1 <= self.burst <= MAX_BURST, "burst", self.burst,
             f"must be between 1 (one frame per trigger) and {MAX_BURST} frames per trigger")
        need(self.burst == 1 or self.mode != "free-run", "burst", self.burst,
             "a burst is taken per trigger, and free-run has none (it judges frames as they come and skips "
             "those the quality gate would retake); use 1, or a triggered mode")
