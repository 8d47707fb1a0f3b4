"""The station's image folder: kept frames (JPEG, or PNG for lossless retraining data) and heat-map
overlays (JPEG), within a disk budget.

The verdict log (store.py) is the record; images are evidence attached to it. They are written
before their row (so a row never names an image that was not written) and deleted only after the
row's refs were cleared (so a row never names an image that was deleted on purpose). Files left
without a row by a crash are swept at start-up.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from device.errors import KenpinError

JPEG_QUALITY = 90
PNG_COMPRESSION = 1  # the fastest zlib level: a Pi writes it between parts
# record.frame_format: JPEG is several times smaller; PNG keeps the frame exactly as judged — a JPEG copy of
# a near-threshold part can score on the other side of the threshold, and retraining on it would
# learn compression artefacts.
FRAME_FORMATS = ("jpg", "png")
# What new_ref() writes (and its temp file): the start-up sweep touches nothing else, so a data_dir
# pointed at a folder with other images in it never loses them.
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
OUR_FILE = re.compile(r"\d{4}-\d{2}-\d{2}/\d{6}_\d{3}_\d+_\d+_(ok|defect|retake)_(frame\.(jpg|png)|heat\.jpg)(\.part)?")
OVERLAY_ALPHA = 0.55  # heat colour over the frame where it is hot: strong, since only hot places get it


def heat_overlay(heatmap: np.ndarray, frame_rgb: np.ndarray | None, full_scale: float) -> np.ndarray:
    """BGR image of ``heatmap`` coloured (JET) and blended over the frame when one is given.

    The station's maps are heat units (``scoring.heat_units``: 0 where good parts' patches rarely
    reach, 1 at the threshold); ``full_scale`` is the heat drawn hottest, 2. A fixed scale keeps
    colours comparable between parts (scaling each map to its own maximum would paint every good
    part red somewhere). The colour fades in from 0 and is full from the threshold up, so the
    operator sees the defect, not a tint over the whole part.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be 2-D, got shape {heat.shape}")
    scale = full_scale if full_scale > 0 else float(heat.max()) or 1.0
    u8 = np.clip(heat / scale * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    if frame_rgb is None:
        return colour
    frame_bgr = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR)
    size = (frame_bgr.shape[1], frame_bgr.shape[0])
    if colour.shape[:2] != frame_bgr.shape[:2]:
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_LINEAR)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    # None at or below 0, OVERLAY_ALPHA from half the full scale (the threshold) up.
    alpha = np.clip(heat / scale * 2.0, 0.0, 1.0)[..., None] * OVERLAY_ALPHA
    return (colour * alpha + frame_bgr * (1.0 - alpha) + 0.5).astype(np.uint8)


class ImageFolder:
    """Image files under ``root`` addressed by refs (paths relative to ``root``), with a byte count.

    Not thread-safe on its own: the store calls it under its writer lock.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = self.root.resolve()
        self.bytes = 0
        self._seq = 0

    def new_ref(self, t: float, verdict: str, kind: str, ext: str = "jpg") -> str:
        """A unique ref for a frame/heat image of a part captured at ``t`` (one folder per UTC day)."""
        self._seq += 1
        tm = time.gmtime(t)
        ms = int((t % 1.0) * 1000)
        return (f"{time.strftime('%Y-%m-%d', tm)}/{time.strftime('%H%M%S', tm)}_{ms:03d}_"
                f"{os.getpid()}_{self._seq:07d}_{verdict}_{kind}.{ext}")

    def write_image(self, ref: str, bgr: np.ndarray) -> int:
        """Encode (JPEG or PNG, by the ref's suffix) and write atomically (temp file + rename); returns
        the bytes written. Raises OSError."""
        png = ref.endswith(".png")
        params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION] if png else [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ok, buf = cv2.imencode(".png" if png else ".jpg", bgr, params)
        if not ok:
            raise OSError(f"OpenCV could not encode a {bgr.shape} image as {'PNG' if png else 'JPEG'}")
        path = self.root / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as fh:
                fh.write(buf.tobytes())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.bytes += len(buf)
        return len(buf)

    def delete(self, refs: list[str]) -> int:
        """Remove these files (missing ones are fine); returns the bytes freed."""
        freed = 0
        for ref in refs:
            path = self.root / ref
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
        self.bytes = max(0, self.bytes - freed)
        return freed

    def size(self, ref: str) -> int:
        """Bytes of the file of ``ref`` (0 if it is gone)."""
        try:
            return (self.root / ref).stat().st_size
        except FileNotFoundError:
            return 0

    def resolve(self, ref: str) -> Path:
        """The file of ``ref``; KenpinError if it escapes the folder or does not exist."""
        if not ref or Path(ref).is_absolute():
            raise KenpinError(f"image ref {ref!r} is not a path relative to {self.root}")
        path = (self._resolved_root / ref).resolve()
        if not path.is_relative_to(self._resolved_root):
            raise KenpinError(f"image ref {ref!r} points outside {self.root}; refs name files inside it")
        if not path.is_file():
            raise KenpinError(f"image {ref!r} is not in {self.root} (deleted by retention or never written)")
        return path

    def sweep(self, referenced: set[str]) -> tuple[int, int]:
        """Delete our files no row refers to (written just before a crash, or half-written
        ``.part`` files); recount our bytes. Returns (files removed, bytes kept)."""
        removed, kept = 0, 0
        for day in self.root.iterdir():
            if not day.is_dir():
                continue
            for path in day.iterdir():
                ref = f"{day.name}/{path.name}"
                if not OUR_FILE.fullmatch(ref):
                    continue
                if ref in referenced:
                    kept += path.stat().st_size
                else:
                    path.unlink(missing_ok=True)
                    removed += 1
            if DAY.fullmatch(day.name) and not any(day.iterdir()):
                day.rmdir()  # an empty day folder after retention
        self.bytes = kept
        return removed, kept

    def disk_free(self) -> int:
        """Free bytes on the file system holding the folder."""
        return shutil.disk_usage(self.root).free
