"""Camera sources behind one interface: a replay folder, OpenCV VideoCapture, picamera2.

Each source opens, reads HxWx3 uint8 RGB frames and closes; a read that fails raises
CameraLost and the capture worker reconnects with back-off (counted and logged there).
picamera2 and OpenCV's devices are only touched when configured.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from device.errors import ImageError, KenpinError
from device.images import list_images, read_rgb
from device.schema import need
from device.station.raw import RawStream, deepest_unpacked

log = logging.getLogger("kenpin.station.camera")


class CameraLost(Exception):
    """The source stopped delivering frames (unplugged, stream dropped); worth reconnecting."""


class Camera(Protocol):
    """What the capture worker needs from a source."""

    description: str
    paced: bool  # True: frames are produced on demand (replay at fps 0), never skipped

    def open(self) -> None: ...
    def read(self) -> np.ndarray: ...
    def close(self) -> None: ...


@runtime_checkable
class FullSizeCamera(Camera, Protocol):
    """A source that analyses a small image of each frame and also has the frame at full size (the
    image kept for the record): picamera2's ``lores`` and ``main`` streams."""

    def full_size(self) -> np.ndarray | None:
        """The full-size RGB image of the frame :meth:`read` returned last; None when it cannot be had."""
        ...


@runtime_checkable
class GateFrameCamera(Camera, Protocol):
    """A source that can give the quality gate a deeper image of each frame than the one analysed:
    picamera2's raw sensor stream (``raw_for_gate``)."""

    def gate_frame(self) -> tuple[np.ndarray, int] | None:
        """The gate's image of the frame :meth:`read` returned last and its significant bits (a uint16
        frame of a 12-bit sensor: 12); None when the source gives none (the analysed frame is gated then)."""
        ...


@dataclass(frozen=True)
class ReplaySettings:
    folder: Path = Path("/var/lib/kenpin/replay")
    fps: float = 0.0
    loop: bool = True

    def __post_init__(self) -> None:
        need(self.fps >= 0, "fps", self.fps, "must be 0 (as fast as inspected) or positive")


class ReplayCamera:
    """Images of a folder, decoded once and replayed in name order (the embedded default).

    Corrupt images are skipped, counted and logged when the folder is opened. ``fps`` 0 means
    paced by the pipeline: every frame is inspected, as fast as the model goes (tests, benches).
    """

    Settings: ClassVar[type] = ReplaySettings

    def __init__(self, folder: Path, fps: float = 0.0, loop: bool = True) -> None:
        self.folder, self.fps, self.loop = Path(folder), fps, loop
        self.description = f"replay:{self.folder}"
        self.paced = fps == 0
        self.skipped_images = 0
        self._frames: list[np.ndarray] = []
        self._next = 0
        self._due = 0.0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise KenpinError(f"camera.replay.folder = {self.folder}: folder not found; point it at a folder of images")
        frames = []
        for path in list_images(self.folder):
            try:
                frames.append(read_rgb(path))
            except ImageError as e:
                self.skipped_images += 1
                log.warning("replay: skipping %s", e)
        if not frames:
            raise KenpinError(f"camera.replay.folder = {self.folder}: no readable images "
                              f"({self.skipped_images} unreadable); it needs PNG/JPEG/BMP/TIFF files")
        self._frames, self._next, self._due = frames, 0, time.monotonic()
        log.info("replay: %d frames from %s (%d unreadable skipped)", len(frames), self.folder, self.skipped_images)

    def read(self) -> np.ndarray:
        if self._next >= len(self._frames):
            if not self.loop:
                raise EOFError("replay folder finished")
            self._next = 0
        if self.fps > 0:
            self._due += 1.0 / self.fps
            delay = self._due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._due = time.monotonic()  # fell behind: do not burst to catch up
        frame = self._frames[self._next]
        self._next += 1
        return frame

    def close(self) -> None:
        self._frames = []


@dataclass(frozen=True)
class OpenCVSettings:
    source: str = "0"
    width: int = 0
    height: int = 0


class OpenCVCamera:
    """A USB/V4L2 device (an integer index or /dev/videoN), an RTSP URL or a video file."""

    Settings: ClassVar[type] = OpenCVSettings

    def __init__(self, source: str, width: int = 0, height: int = 0) -> None:
        self.source = int(source) if source.isdigit() else source
        self.width, self.height = width, height
        self.description = f"opencv:{source}"
        self.paced = False
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            raise CameraLost(f"camera.opencv.source = {self.source!r}: cannot be opened "
                             "(no such device, stream unreachable or unsupported file)")
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraLost("camera not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraLost(f"camera.opencv.source = {self.source!r}: no frame (disconnected or end of stream)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@dataclass(frozen=True)
class PiCameraSettings:
    size: tuple[int, int] = (1280, 960)
    lores: tuple[int, int] = (640, 480)
    exposure_us: int = 0
    gain: float = 0.0
    fps: float = 30.0
    raw_for_gate: bool = False  # the quality gate reads the sensor's raw stream (10–16 bits), not lores


class PiCamera:
    """A Raspberry Pi camera through picamera2 (imported only here; apt's python3-picamera2).

    The picamera2 idiom: a video configuration for continuous capture, fixed exposure and gain so
    that images are repeatable, and two streams of every frame taken from one request: the small
    ``lores`` one (YUV420) is analysed and shown live, the full-size ``main`` one (XBGR8888, laid
    out R, G, B, X in memory) is the image kept for the record. The request of the last frame read
    is held until the next read, so ``main`` is copied out only for the frames that are inspected.
    With ``raw_for_gate`` the sensor's raw stream of the same request is what the quality gate reads
    (:mod:`device.station.raw`); the anomaly model still judges ``lores``.
    """

    Settings: ClassVar[type] = PiCameraSettings

    def __init__(self, size: tuple[int, int], lores: tuple[int, int], exposure_us: int, gain: float, fps: float,
                 raw_for_gate: bool = False) -> None:
        self.size, self.lores, self.exposure_us, self.gain, self.fps = size, lores, exposure_us, gain, fps
        self.raw_for_gate = raw_for_gate
        self.description = f"picamera2:{lores[0]}x{lores[1]}"
        self.paced = False
        self._cam = None
        self._request = None  # the last frame's completed request, released at the next read
        self._raw: RawStream | None = None  # the raw stream as configured, with raw_for_gate

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise KenpinError("camera.type = picamera2: the picamera2 module is not installed; on a Raspberry Pi "
                              "install python3-picamera2 (apt) and create the venv with --system-site-packages") from None
        try:
            cam = Picamera2()
        except (RuntimeError, IndexError) as e:
            raise CameraLost(f"camera.type = picamera2: no camera found ({e})") from None
        controls: dict[str, float] = {"FrameRate": self.fps}
        if self.exposure_us:
            controls.update(ExposureTime=self.exposure_us, AeEnable=False)
        if self.gain:
            controls.update(AnalogueGain=self.gain)
        streams: dict[str, Any] = {"main": {"size": tuple(self.size), "format": "XBGR8888"},
                                   "lores": {"size": tuple(self.lores), "format": "YUV420"}}
        if self.raw_for_gate:
            streams["raw"] = {"format": self._raw_request(cam)}
        cam.configure(cam.create_video_configuration(**streams, controls=controls))
        if self.raw_for_gate:
            self._raw = self._configured_raw(cam)
        cam.start()
        self._cam = cam

    @staticmethod
    def _raw_request(cam: Any) -> str:
        """The unpacked raw format to ask for: the deepest of the sensor's modes."""
        fmt = deepest_unpacked(cam.sensor_modes or [])
        if fmt is None:
            cam.close()
            raise KenpinError("camera.picamera2.raw_for_gate = true: this camera lists no sensor modes, so it has no "
                              "raw stream for the quality gate (a USB camera behind libcamera has none); set "
                              "raw_for_gate: false")
        return fmt

    @staticmethod
    def _configured_raw(cam: Any) -> RawStream:
        """The raw stream the camera actually set up (a Pi 5 may hand another format than asked for)."""
        raw = (cam.camera_configuration() or {}).get("raw") or {}
        stream = RawStream.parse(raw.get("format"), raw.get("size") or (0, 0))
        if stream is None:
            cam.close()
            raise KenpinError(f"camera.picamera2.raw_for_gate = true: the sensor's raw stream comes as "
                              f"{raw.get('format')!r}, not an unpacked Bayer format (SRGGB12 …) the quality gate can "
                              "read; set raw_for_gate: false")
        log.info("picamera2: the quality gate reads the raw stream %s (%dx%d, %d bits)", raw.get("format"),
                 *stream.size, stream.bits)
        return stream

    def read(self) -> np.ndarray:
        """The next frame's ``lores`` image, RGB."""
        if self._cam is None:
            raise CameraLost("camera not open")
        self._release()
        try:
            self._request = self._cam.capture_request()
            yuv = self._request.make_array("lores")
        except Exception as e:  # libcamera errors surface as assorted types; all mean "lost"
            self._release()
            raise CameraLost(f"picamera2: capture failed ({e})") from None
        rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV420p2RGB)
        width = self.lores[0]  # rows are padded to the stream's stride: the padding is no part of the image
        return rgb if rgb.shape[1] == width else np.ascontiguousarray(rgb[:, :width])

    def full_size(self) -> np.ndarray | None:
        """The ``main`` image (RGB, a copy) of the frame :meth:`read` returned last; None when it cannot be read."""
        if self._request is None:
            return None
        try:
            xbgr = self._request.make_array("main")
        except Exception as e:  # as in read(); the analysed image is then kept instead
            log.warning("picamera2: full-size image unavailable (%s); the lores image is kept", e)
            return None
        return cv2.cvtColor(xbgr, cv2.COLOR_RGBA2RGB)

    def gate_frame(self) -> tuple[np.ndarray, int] | None:
        """With ``raw_for_gate``: the raw stream of the frame :meth:`read` returned last, binned to RGB in
        uint16, and the sensor's bits; None otherwise or when it cannot be read (the lores frame is gated then)."""
        if self._raw is None or self._request is None:
            return None
        try:
            buf = self._request.make_array("raw")
        except Exception as e:  # as in read(); one frame gated on lores is better than none judged
            log.warning("picamera2: raw stream unavailable (%s); the gate reads the lores frame", e)
            return None
        return self._raw.binned_rgb(buf), self._raw.bits

    def _release(self) -> None:
        """Give the held request's buffers back to the camera (one that is gone may refuse: nothing to do then)."""
        request, self._request = self._request, None
        if request is not None:
            try:
                request.release()
            except Exception:  # the reconnect that follows opens a new camera
                log.debug("picamera2: releasing a request failed", exc_info=True)

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._release()
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None


# Sources by ``camera.type``: a new one is a class whose ``Settings`` dataclass is its block in the
# config and whose constructor takes those settings as keywords, listed here.
CAMERAS: dict[str, Any] = {"replay": ReplayCamera, "opencv": OpenCVCamera, "picamera2": PiCamera}


def make_camera(kind: str, settings: Any) -> Camera:
    """The source of type ``kind`` with its settings (not opened yet)."""
    return CAMERAS[kind](**vars(settings))


class Backoff:
    """Reconnect delays: doubling from ``initial`` up to ``maximum``, reset after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial
