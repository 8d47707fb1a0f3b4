"""The ``products:`` list of the station config: each product the station can inspect, by number.

A product is a bundle and the settings that go with it (threshold, reject pulse). The PLC, the
dashboard and HTTP switch between them by number (:mod:`device.station.products` runs them). A
config without ``products:`` has one implicit product, number 0, named after the station, judged
with ``bundle.path`` — the station as it always was.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device.schema import need


@dataclass(frozen=True)
class ProductSection:
    """One item of ``products:``: ``number`` and ``bundle`` are required, the rest falls back to
    the station's own settings (``decision.threshold``, ``actuator.pulse_ms``/``delay_ms``)."""

    number: int
    bundle: Path  # relative to the config file, like bundle.path
    name: str = ""  # shown on the dashboard; "" = "product N"
    threshold: float | None = None  # overrides decision.threshold while this product is active
    pulse_ms: float | None = None  # overrides actuator.pulse_ms for this product's parts
    delay_ms: float | None = None  # overrides actuator.delay_ms (its parts may travel differently)

    def __post_init__(self) -> None:
        need(self.number >= 0, "number", self.number, "must be a whole number 0 or more")
        need(self.threshold is None or 0 < self.threshold < 1, "threshold", self.threshold,
             "must be strictly between 0 and 1 (the calibrated threshold is 0.5), or left out")
        need(self.pulse_ms is None or self.pulse_ms > 0, "pulse_ms", self.pulse_ms, "must be positive, or left out")
        need(self.delay_ms is None or self.delay_ms >= 0, "delay_ms", self.delay_ms,
             "must be 0 or positive, or left out")

    @property
    def label(self) -> str:
        """The name shown to people: ``name``, else ``product N``."""
        return self.name or f"product {self.number}"


def check_products(products: tuple[ProductSection, ...], product: int | None) -> None:
    """Cross-item checks of ``products:`` and ``product:``; raises Invalid naming the item's key."""
    seen: dict[int, int] = {}
    for i, p in enumerate(products):
        need(p.number not in seen, f"products[{i}].number", p.number,
             f"products[{seen.get(p.number)}] already has this number; give each product its own")
        seen[p.number] = i
    known = sorted(seen) if products else [0]
    need(product is None or product in known, "product", product,
         f"names no product; use one of the numbers in products: {known}" if products
         else "names no product; without products: the station's only product is 0")


@dataclass(frozen=True)
class Product:
    """One product as the station runs it now: the values in force, run-time changes included."""

    number: int
    name: str
    bundle_id: str
    threshold: float  # normalized; the product's own, else decision.threshold (or as changed at run time)
    pulse_ms: float  # the product's own, else actuator.pulse_ms
    delay_ms: float  # the product's own, else actuator.delay_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dashboard, status, the PLC servers)."""
        return asdict(self)
