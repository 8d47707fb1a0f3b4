"""The station's YAML configuration: dataclasses, validated once when the file is read.

Strict like Frigate's schema: an unknown key, a wrong type or a value out of range is a
KenpinError naming the file, the key, its YAML line and what would be right (``device.schema``
reads every YAML file kenpin takes). Every key is documented in ``configs/station.yaml``. The
``dashboard``, ``mqtt``, ``modbus``, ``opcua`` and ``products`` sections are typed by their own modules'
settings classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device.dashboard.settings import DashboardSettings
from device.errors import KenpinError
from device.schema import Document, internal, load, need, parse_yaml, per_kind, read_yaml
from device.station.actuator import ActuatorSection
from device.station.camera import CAMERAS
from device.station.modbus_settings import ModbusSettings
from device.station.mqtt_settings import MqttSettings
from device.station.product_settings import ProductSection, check_products
from device.station.retention import FRAME_FORMATS
from device.station.opcua_settings import OpcUaSettings
from device.station.triggers import TriggerSection

PRECISION_CHOICES = ("auto", "int8", "fp32")


@dataclass(frozen=True)
class StationSection:
    name: str = "station-1"
    data_dir: Path = Path("/var/lib/kenpin")

    def __post_init__(self) -> None:
        need(bool(self.name.strip()), "name", self.name, "must not be empty")


@dataclass(frozen=True)
class BundleSection:
    path: Path = Path("/var/lib/kenpin/bundle")
    precision: str = "auto"
    threads: int = 2

    def __post_init__(self) -> None:
        need(self.precision in PRECISION_CHOICES, "precision", self.precision, f"must be one of {PRECISION_CHOICES}")
        need(1 <= self.threads <= 64, "threads", self.threads, "must be between 1 and 64")


@dataclass(frozen=True)
class CameraSection:
    """The ``camera:`` section: ``type`` picks a source of CAMERAS; each source's settings sit under
    a key of its name (``replay:``, ``opencv:``, ``picamera2:``), read by the source's own class."""

    type: str = "replay"
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    sources: dict[str, Any] = per_kind(CAMERAS)

    def __post_init__(self) -> None:
        need(self.type in CAMERAS, "type", self.type, f"must be one of {tuple(CAMERAS)}")
        need(0 < self.reconnect_initial_s <= self.reconnect_max_s, "reconnect_initial_s",
             self.reconnect_initial_s, "must be positive and at most reconnect_max_s")
        need(self.type == "picamera2" or not self.raw_for_gate, "picamera2.raw_for_gate", True,
             f"only a picamera2 camera has a sensor raw stream and camera.type is {self.type}; set type: picamera2, "
             "or raw_for_gate: false")

    @property
    def raw_for_gate(self) -> bool:
        """True when the quality gate is to read the sensor's raw stream (picamera2's ``raw_for_gate``)."""
        return bool(getattr(self.sources.get("picamera2"), "raw_for_gate", False))

    @property
    def settings(self) -> Any:
        """The chosen source's settings."""
        return self.sources[self.type]

    def __getattr__(self, name: str) -> Any:  # cfg.camera.replay reads like the file
        sources = self.__dict__.get("sources", {})
        if name in sources:
            return sources[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class PipelineSection:
    inference_queue: int = 1
    workers: int = 1
    record_queue: int = 64
    live_jpeg_hz: float = 5.0
    watchdog_stall_s: float = 10.0

    def __post_init__(self) -> None:
        need(self.inference_queue >= 1, "inference_queue", self.inference_queue, "must be 1 or more")
        need(1 <= self.workers <= 16, "workers", self.workers, "must be between 1 and 16")
        need(self.record_queue >= 1, "record_queue", self.record_queue, "must be 1 or more")
        need(self.live_jpeg_hz > 0, "live_jpeg_hz", self.live_jpeg_hz, "must be positive")
        need(self.watchdog_stall_s > 0, "watchdog_stall_s", self.watchdog_stall_s, "must be positive")


@dataclass(frozen=True)
class DecisionSection:
    threshold: float = 0.5

    def __post_init__(self) -> None:
        need(0 < self.threshold < 1, "threshold", self.threshold,
             "must be strictly between 0 and 1 (the calibrated threshold is 0.5)")


@dataclass(frozen=True)
class RecordSection:
    image_budget_mb: float = 1024.0
    ok_image_fraction: float = 0.01
    seed: int = 0
    reserve_mb: float = 64.0
    frame_format: str = "jpg"

    def __post_init__(self) -> None:
        need(self.image_budget_mb > 0, "image_budget_mb", self.image_budget_mb, "must be positive")
        need(0 <= self.ok_image_fraction <= 1, "ok_image_fraction", self.ok_image_fraction, "must be between 0 and 1")
        need(self.reserve_mb >= 0, "reserve_mb", self.reserve_mb, "must be 0 or positive")
        need(self.frame_format in FRAME_FORMATS, "frame_format", self.frame_format,
             f"use {' or '.join(FRAME_FORMATS)}")


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
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    mqtt: MqttSettings | None = None  # no section: no fleet publishing
    products: tuple[ProductSection, ...] = ()  # none: one product, number 0, judged with bundle.path
    product: int | None = None  # the product at start when no switch was kept; None: the first listed
    modbus: ModbusSettings | None = None  # no section: no Modbus TCP server
    opcua: OpcUaSettings | None = None  # no section: no OPC UA server
    config_file: Path | None = internal()  # the file it was read from (for messages)

    def __post_init__(self) -> None:
        check_products(self.products, self.product)

    @property
    def gate_required_by(self) -> str | None:
        """The setting that needs every product's bundle to carry a quality gate; None when none does."""
        if self.trigger.burst > 1:
            return f"trigger.burst = {self.trigger.burst} (a burst needs a quality gate to choose its best frame by)"
        if self.camera.raw_for_gate:
            return "camera.picamera2.raw_for_gate = true (only a quality gate reads the raw stream)"
        return None

    def product_sections(self) -> tuple[ProductSection, ...]:
        """The products in config order; without ``products:`` the implicit one (0, the station's name, bundle.path)."""
        return self.products or (ProductSection(0, self.bundle.path, self.station.name),)

    @property
    def start_product(self) -> int:
        """The number of the product active at start when no switch was kept."""
        return self.product if self.product is not None else self.product_sections()[0].number

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for the dashboard (no secrets: dashboard/mqtt/opcua sections left out)."""
        return {
            "name": self.station.name, "data_dir": str(self.station.data_dir),
            "bundle": str(self.bundle.path) if not self.products else "per product", "precision": self.bundle.precision,
            "camera": self.camera.type, "trigger": self.trigger.mode, "every_n": self.trigger.every_n,
            "burst": self.trigger.burst, "raw_for_gate": self.camera.raw_for_gate,
            "rate_hz": self.trigger.rate_hz, "actuator": self.actuator.type,
            "pulse_ms": self.actuator.pulse_ms, "delay_ms": self.actuator.delay_ms,
            "image_budget_mb": self.record.image_budget_mb,
            "ok_image_fraction": self.record.ok_image_fraction,
            "products": {str(p.number): f"{p.label} ({p.bundle})" for p in self.product_sections()},
            "start_product": self.start_product,
        }


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> StationConfig:
    """Validate YAML text; relative paths are resolved against ``base`` (the file's folder)."""
    return _from_document(parse_yaml(text, source), base)


def _from_document(doc: Document, base: Path | None) -> StationConfig:
    # The opcua/mqtt files are joined to ``base`` while loading: their sections check that they exist.
    cfg = load(StationConfig, doc, folder=base)
    return cfg if base is None else _resolve_paths(cfg, base)


def _resolve_paths(cfg: StationConfig, base: Path) -> StationConfig:
    def rel(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    return replace(
        cfg,
        station=replace(cfg.station, data_dir=rel(cfg.station.data_dir)),
        bundle=replace(cfg.bundle, path=rel(cfg.bundle.path)),
        camera=replace(cfg.camera, sources={**cfg.camera.sources,
                                            "replay": replace(cfg.camera.replay, folder=rel(cfg.camera.replay.folder))}),
        products=tuple(replace(p, bundle=rel(p.bundle)) for p in cfg.products),
    )


def load_config(path: str | Path) -> StationConfig:
    """Read and validate a station YAML file (relative paths are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise KenpinError(f"{path}: station config file not found; pass --config with a YAML file like configs/station.yaml")
    cfg = _from_document(read_yaml(path, "station config"), path.resolve().parent)
    return replace(cfg, config_file=path)
