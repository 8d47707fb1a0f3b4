"""A camera sensor's raw stream as the capture-quality gate reads it (``camera.picamera2.raw_for_gate``).

The gate ranks sensor noise, a per-pixel signal that the ISP's 8-bit output rounds away; the raw
stream keeps the sensor's 10–16 bits. picamera2 hands an unpacked Bayer stream (``SRGGB12`` …) over
as rows of bytes, two little-endian bytes a pixel; here each 2×2 Bayer cell becomes one RGB pixel
(red, the mean of the two greens, blue), kept in uint16 at the sensor's own scale: a 12-bit sensor's
values stay 0…4095 and the frame travels with ``bits = 12``, so the gate scales it by 4095
(:func:`device.ranker_input.significant_bits`). No black level is subtracted and no white balance or
gamma applied: the gate reads the light as the sensor counted it, and a gate meant for this stream
is calibrated on it. Packed (``_CSI2P``) and compressed (``PISP_COMP1``) streams are not read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_UNPACKED = re.compile(r"^S(RGGB|GRBG|GBRG|BGGR)(\d+)$")
_CELL = ((0, 0), (0, 1), (1, 0), (1, 1))  # a Bayer cell's pixels in the order its name spells them


@dataclass(frozen=True)
class RawStream:
    """An unpacked Bayer stream: its colour order (of the top-left 2×2 cell), bits and size (width, height)."""

    order: str
    bits: int
    size: tuple[int, int]

    @classmethod
    def parse(cls, fmt: Any, size: Sequence[int]) -> RawStream | None:
        """The stream of format name ``fmt`` (``SRGGB12``); None for a packed, compressed or unknown format."""
        m = _UNPACKED.match(str(fmt))
        if m is None or not 8 <= int(m.group(2)) <= 16:
            return None
        return cls(m.group(1), int(m.group(2)), (int(size[0]), int(size[1])))

    def pixels(self, buf: np.ndarray) -> np.ndarray:
        """The picamera2 array of the stream (height x stride bytes) → height x width sensor values."""
        rows = np.ascontiguousarray(buf)
        values = rows if self.bits <= 8 else rows.view("<u2")  # unpacked: one pixel in two bytes, little-endian
        return values[: self.size[1], : self.size[0]]

    def binned_rgb(self, buf: np.ndarray) -> np.ndarray:
        """The stream's array → (height/2) x (width/2) x 3 RGB in the sensor's units (uint16, 0 … 2**bits − 1)."""
        px = self.pixels(buf)
        h, w = px.shape[0] // 2 * 2, px.shape[1] // 2 * 2
        planes: dict[str, list[np.ndarray]] = {"R": [], "G": [], "B": []}
        for colour, (dy, dx) in zip(self.order, _CELL):
            planes[colour].append(px[dy:h:2, dx:w:2])
        g1, g2 = planes["G"]
        green = (g1.astype(np.uint32) + g2 + 1) >> 1  # the two greens' mean, rounded
        return np.dstack([planes["R"][0], green, planes["B"][0]]).astype(np.uint16)


def deepest_unpacked(modes: Sequence[dict[str, Any]]) -> str | None:
    """The unpacked format of the deepest of a sensor's modes (picamera2's ``sensor_modes``); None when it lists none."""
    usable = [m for m in modes if m.get("unpacked") and m.get("bit_depth")]
    if not usable:
        return None
    return str(max(usable, key=lambda m: int(m["bit_depth"]))["unpacked"])
