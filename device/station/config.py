"""The station's YAML configuration: dataclasses, validated once when the file is read.

Strict like Frigate's schema: an unknown key, a wrong type or a value out of range is a
KenpinError naming the file, the key, its YAML line and what would be right. Every key is
documented in ``configs/station.yaml``. The ``dashboard`` and ``mqtt`` sections belong to their
own modules, which validate them (this file only checks they are mappings).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from device.errors import KenpinError

CAMERA_TYPES = ("replay", "opencv", "picamera2")
TRIGGER_MODES = ("free-run", "software", "gpio")
ACTUATOR_TYPES = ("none", "gpio")
PRECISION_CHOICES = ("auto", "int8", "fp32")


@dataclass(frozen=True)
class StationSection:
    name: str = "station-1"
    data_dir: Path = Path("/var/lib/kenpin")


@dataclass(frozen=True)
class BundleSection:
    path: Path = Path("/var/lib/kenpin/bundle")
    precision: str = "auto"
    threads: int = 2


@dataclass(frozen=True)
class ReplaySection:
    folder: Path = Path("/var/lib/kenpin/replay")
    fps: float = 0.0
    loop: bool = True


@dataclass(frozen=True)
class OpenCVSection:
    source: str = "0"
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class PiCameraSection:
    size: tuple[int, int] = (1280, 960)
    lores: tuple[int, int] = (640, 480)
    exposure_us: int = 0
    gain: float = 0.0
    fps: float = 30.0


@dataclass(frozen=True)
class CameraSection:
    type: str = "replay"
    replay: ReplaySection = field(default_factory=ReplaySection)
    opencv: OpenCVSection = field(default_factory=OpenCVSection)
    picamera2: PiCameraSection = field(default_factory=PiCameraSection)
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class TriggerSection:
    mode: str = "free-run"
    every_n: int = 1
    rate_hz: float = 0.0
    gpio_pin: str = "GPIO17"
    gpio_pull_up: bool = False
    gpio_bounce_ms: float = 5.0
    max_backlog: int = 100000


@dataclass(frozen=True)
class ActuatorSection:
    type: str = "none"
    reject_pin: str = "GPIO27"
    ok_pin: str = ""
    pulse_ms: float = 50.0
    delay_ms: float = 0.0


@dataclass(frozen=True)
class PipelineSection:
    inference_queue: int = 1
    workers: int = 1
    record_queue: int = 64
    live_jpeg_hz: float = 5.0
    watchdog_stall_s: float = 10.0


@dataclass(frozen=True)
class DecisionSection:
    threshold: float = 0.5


@dataclass(frozen=True)
class RecordSection:
    image_budget_mb: float = 1024.0
    ok_image_fraction: float = 0.01
    seed: int = 0
    reserve_mb: float = 64.0


@dataclass(frozen=True)
class StationConfig:
    """The whole station configuration (one YAML file)."""

    station: StationSection = field(default_factory=StationSection)
    bundle: BundleSection = field(default_factory=BundleSection)
    camera: CameraSection = field(default_factory=CameraSection)
    trigger: TriggerSection = field(default_factory=TriggerSection)
    actuator: ActuatorSection = field(default_factory=ActuatorSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    decision: DecisionSection = field(default_factory=DecisionSection)
    record: RecordSection = field(default_factory=RecordSection)
    dashboard: dict[str, Any] = field(default_factory=dict)
    mqtt: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None  # the file it was read from (for messages)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for the dashboard (no secrets: dashboard/mqtt sections left out)."""
        return {
            "name": self.station.name, "data_dir": str(self.station.data_dir),
            "bundle": str(self.bundle.path), "precision": self.bundle.precision,
            "camera": self.camera.type, "trigger": self.trigger.mode, "every_n": self.trigger.every_n,
            "rate_hz": self.trigger.rate_hz, "actuator": self.actuator.type,
            "pulse_ms": self.actuator.pulse_ms, "delay_ms": self.actuator.delay_ms,
            "image_budget_mb": self.record.image_budget_mb,
            "ok_image_fraction": self.record.ok_image_fraction,
        }


class _Where:
    """Names a key with its file and YAML line in error messages."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source, self.lines = source, lines

    def __call__(self, path: tuple[str, ...]) -> str:
        line = self.lines.get(path)
        at = f", line {line}" if line else ""
        return f"{self.source}{at}: {'.'.join(path)}"


def _compose(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """YAML → plain data plus the line of every mapping key."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise KenpinError(f"{source}: not valid YAML ({e})") from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: Any, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    if node is not None:
        walk(node, ())
    return (yaml.safe_load(text) if node is not None else {}), lines


def _convert(value: Any, hint: Any, path: tuple[str, ...], where: _Where) -> Any:
    """One value to the annotated type, or a KenpinError naming the key."""
    origin = get_origin(hint)
    if is_dataclass(hint):
        return _build(hint, value, path, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise KenpinError(f"{where(path)} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KenpinError(f"{where(path)} = {value!r}: expected a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KenpinError(f"{where(path)} = {value!r}: expected a number")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise KenpinError(f"{where(path)} = {value!r}: expected a string")
        return str(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise KenpinError(f"{where(path)} = {value!r}: expected a path")
        return Path(value)
    if origin is tuple:
        n = len(get_args(hint))
        if not isinstance(value, list) or len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise KenpinError(f"{where(path)} = {value!r}: expected a list of {n} whole numbers, e.g. [640, 480]")
        return tuple(value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise KenpinError(f"{where(path)}: expected a mapping of keys")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a programming error, not a user's


def _build(cls: type, data: Any, path: tuple[str, ...], where: _Where) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KenpinError(f"{where(path) if path else where.source}: expected a mapping of keys, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "config_file"}
    for key in data:
        if key not in known:
            raise KenpinError(f"{where(path + (str(key),))}: unknown key; expected one of {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], path + (k,), where) for k, v in data.items()}
    return cls(**kwargs)


def _check(cfg: StationConfig, where: _Where) -> None:
    """Ranges and choices that types alone cannot express."""
    def need(ok: bool, path: tuple[str, ...], value: Any, right: str) -> None:
        if not ok:
            raise KenpinError(f"{where(path)} = {value!r}: {right}")

    need(cfg.camera.type in CAMERA_TYPES, ("camera", "type"), cfg.camera.type, f"must be one of {CAMERA_TYPES}")
    need(cfg.trigger.mode in TRIGGER_MODES, ("trigger", "mode"), cfg.trigger.mode, f"must be one of {TRIGGER_MODES}")
    need(cfg.actuator.type in ACTUATOR_TYPES, ("actuator", "type"), cfg.actuator.type, f"must be one of {ACTUATOR_TYPES}")
    need(cfg.bundle.precision in PRECISION_CHOICES, ("bundle", "precision"), cfg.bundle.precision,
         f"must be one of {PRECISION_CHOICES}")
    need(1 <= cfg.bundle.threads <= 64, ("bundle", "threads"), cfg.bundle.threads, "must be between 1 and 64")
    need(cfg.trigger.every_n >= 1, ("trigger", "every_n"), cfg.trigger.every_n, "must be 1 or more")
    need(cfg.trigger.rate_hz >= 0, ("trigger", "rate_hz"), cfg.trigger.rate_hz, "must be 0 (off) or positive")
    need(cfg.trigger.max_backlog >= 1, ("trigger", "max_backlog"), cfg.trigger.max_backlog, "must be 1 or more")
    need(cfg.camera.replay.fps >= 0, ("camera", "replay", "fps"), cfg.camera.replay.fps, "must be 0 (as fast as inspected) or positive")
    need(0 < cfg.camera.reconnect_initial_s <= cfg.camera.reconnect_max_s, ("camera", "reconnect_initial_s"),
         cfg.camera.reconnect_initial_s, "must be positive and at most reconnect_max_s")
    need(cfg.actuator.pulse_ms > 0, ("actuator", "pulse_ms"), cfg.actuator.pulse_ms, "must be positive")
    need(cfg.actuator.delay_ms >= 0, ("actuator", "delay_ms"), cfg.actuator.delay_ms, "must be 0 or positive")
    need(cfg.pipeline.inference_queue >= 1, ("pipeline", "inference_queue"), cfg.pipeline.inference_queue, "must be 1 or more")
    need(1 <= cfg.pipeline.workers <= 16, ("pipeline", "workers"), cfg.pipeline.workers, "must be between 1 and 16")
    need(cfg.pipeline.record_queue >= 1, ("pipeline", "record_queue"), cfg.pipeline.record_queue, "must be 1 or more")
    need(cfg.pipeline.live_jpeg_hz > 0, ("pipeline", "live_jpeg_hz"), cfg.pipeline.live_jpeg_hz, "must be positive")
    need(cfg.pipeline.watchdog_stall_s > 0, ("pipeline", "watchdog_stall_s"), cfg.pipeline.watchdog_stall_s, "must be positive")
    need(0 < cfg.decision.threshold < 1, ("decision", "threshold"), cfg.decision.threshold,
         "must be strictly between 0 and 1 (the calibrated threshold is 0.5)")
    need(cfg.record.reserve_mb >= 0, ("record", "reserve_mb"), cfg.record.reserve_mb, "must be 0 or positive")
    need(cfg.record.image_budget_mb > 0, ("record", "image_budget_mb"), cfg.record.image_budget_mb, "must be positive")
    need(0 <= cfg.record.ok_image_fraction <= 1, ("record", "ok_image_fraction"), cfg.record.ok_image_fraction,
         "must be between 0 and 1")
    need(bool(cfg.station.name.strip()), ("station", "name"), cfg.station.name, "must not be empty")


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> StationConfig:
    """Validate YAML text; relative paths are resolved against ``base`` (the file's folder)."""
    data, lines = _compose(text, source)
    where = _Where(source, lines)
    cfg = _build(StationConfig, data, (), where)
    _check(cfg, where)
    if base is not None:
        cfg = _resolve_paths(cfg, base)
    return cfg


def _resolve_paths(cfg: StationConfig, base: Path) -> StationConfig:
    from dataclasses import replace

    def rel(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    return replace(
        cfg,
        station=replace(cfg.station, data_dir=rel(cfg.station.data_dir)),
        bundle=replace(cfg.bundle, path=rel(cfg.bundle.path)),
        camera=replace(cfg.camera, replay=replace(cfg.camera.replay, folder=rel(cfg.camera.replay.folder))),
    )


def load_config(path: str | Path) -> StationConfig:
    """Read and validate a station YAML file (relative paths are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise KenpinError(f"{path}: station config file not found; pass --config with a YAML file like configs/station.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KenpinError(f"{path}: cannot read the station config ({e})") from None
    from dataclasses import replace

    cfg = parse_config(text, str(path), path.resolve().parent)
    return replace(cfg, config_file=path)
