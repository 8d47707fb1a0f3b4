"""A part's frames: one camera frame, or a burst of ``trigger.burst`` of them and the best by the quality gate.

The capture stage runs the bound product's quality gate on every frame it hands on where the
bundle has one (a small model beside the anomaly one; ``kenpin eval-ranker`` reports the ratio):
to choose a burst's best frame (:class:`~device.quality.BestFrame`, what
:func:`~device.quality.best_of` picks), to skip free-run frames the gate would retake, and to read
the sensor's raw stream while the camera still holds that frame's request. The judgement then takes the gate's assessment as it is (``Job.assessed``).

A burst takes all N frames, never stopping early at a frame that passes, however clearly. The
line is timed by its slowest part: the ejector's ``delay_ms`` must cover the worst trigger → verdict
time, and that worst case is the part whose first frames were poor, which takes all N anyway. An
early stop would lower the median, not the p99 the line is set up for, and it would judge "good
enough" where the issue asks for the best: the frame the gate ranks highest is the one least
likely to flip the verdict. Every frame read is published to the live view.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from device.quality import BestFrame, QualityGate
from device.station.camera import Camera, CameraLost, FullSizeCamera, GateFrameCamera


@dataclass(frozen=True)
class Shot:
    """The frame a part is judged on, with what the record and the judgement need of it."""

    frame: np.ndarray
    captured: float  # unix seconds when this frame (the chosen one) was read
    full: np.ndarray | None  # its full-size image, where the camera has one
    assessed: tuple[float, str] | None  # the gate's (quality, limiting family); None without a gate
    frames: int  # camera frames taken for the part (fewer than asked when the camera was lost mid-burst)


class Shooter:
    """Takes a part's frames from the camera and keeps the best of them by the gate.

    A camera lost (or a replay ending) in the middle of a burst ends it: the part is judged on the
    best frame taken so far, and :attr:`interrupted` holds the exception for the capture loop to
    handle once the part is on its way (a trigger is never dropped for it).
    """

    def __init__(self, camera: Camera, publish: Callable[[np.ndarray, float], None]) -> None:
        """``publish(frame, when)``: the live view's newest frame (each burst frame goes there too)."""
        self.camera, self.publish = camera, publish
        self._full = camera.full_size if isinstance(camera, FullSizeCamera) else None
        self._deep = camera.gate_frame if isinstance(camera, GateFrameCamera) else None
        self.interrupted: CameraLost | EOFError | None = None

    def assess(self, gate: QualityGate, frame: np.ndarray) -> tuple[float, str]:
        """The gate's assessment of the frame the camera read last: of its raw stream where the camera
        gives one (``raw_for_gate``), else of the analysed frame."""
        deep = self._deep() if self._deep is not None else None
        return gate.assess(*deep) if deep is not None else gate.assess(frame)

    def take(self, first: np.ndarray, when: float, gate: QualityGate | None, n: int = 1) -> Shot:
        """``first`` (read at unix time ``when``) and, for a burst, the next ``n`` − 1 frames; the best by
        ``gate`` (the first of equals). Without a gate there is nothing to choose by: ``n`` must be 1."""
        if gate is None:
            if n != 1:
                raise ValueError("a burst needs a quality gate to choose by")  # refused at start-up
            return Shot(first, when, self._full_size(), None, 1)
        best, chosen = BestFrame(), (first, when, None)
        frame, taken = first, 0
        while True:
            if best.offer(taken, self.assess(gate, frame)):
                chosen = (frame, when, self._full_size())  # copied only when it is the best so far
            taken += 1
            if taken == n:
                break
            try:
                frame = self.camera.read()
            except (CameraLost, EOFError) as e:
                self.interrupted = e
                break
            when = time.time()
            self.publish(frame, when)
        return Shot(*chosen, (best.quality, best.reason), taken)

    def _full_size(self) -> np.ndarray | None:
        return self._full() if self._full is not None else None
