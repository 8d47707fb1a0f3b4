"""What changed at run time — each product's threshold and bundle, the product switched to — kept
across restarts.

A power cut must not quietly undo a threshold change or a bundle swap made from the dashboard, nor
put the line back on the product it ran before the PLC switched. The values live beside the verdict
database as a small JSON file, replaced atomically. They hold only while the configuration they
were made against is unchanged: when plant IT edits a product's bundle or threshold in the config
(``bundle.path``/``decision.threshold`` for a station without ``products:``), that product's
overrides go; when the starting product (``product:``) is edited, the kept switch goes.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("kenpin.station")


@dataclass(frozen=True)
class Overrides:
    """One product's run-time values, and the config values they replace."""

    config_bundle: str
    config_threshold: float
    bundle: str
    threshold: float


@dataclass(frozen=True)
class Kept:
    """Everything kept: per product number its overrides, and the product last switched to with
    the config's starting product it was made against."""

    products: dict[int, Overrides] = field(default_factory=dict)
    product: int | None = None
    config_product: int | None = None


class OverrideFile:
    """``overrides.json`` in the station's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "overrides.json"
        self._lock = threading.Lock()  # the PLC and the dashboard may change things at once

    def load(self, config: dict[int, tuple[str, float]], config_product: int) -> Kept:
        """What was kept and still holds against ``config`` (number → (bundle, threshold) as configured)
        and the config's starting product; what no longer holds is left out, and why is logged."""
        try:
            kept = _parse(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Kept()
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("%s unreadable (%s); starting from the config's products, bundles and thresholds", self.path, e)
            return Kept()
        products = {}
        for number, ov in kept.products.items():
            if config.get(number) == (ov.config_bundle, ov.config_threshold):
                products[number] = ov
            else:
                log.info("product %d: its config changed since the last change at run time: the config wins", number)
        product = kept.product
        if product is not None and (kept.config_product != config_product or product not in config):
            log.info("the starting product in the config changed (or product %s is gone): starting on product %d",
                     product, config_product)
            product = None
        return Kept(products, product, config_product)

    def save(self, snapshot: Callable[[], Kept]) -> None:
        """Replace the file atomically (write, fsync, rename) with ``snapshot()``, so a power cut
        leaves old or new; the snapshot is taken under the file's lock, so the last save is the latest state."""
        with self._lock:
            kept = snapshot()
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"products": {str(n): asdict(ov) for n, ov in kept.products.items()},
                           "product": kept.product, "config_product": kept.config_product}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


def _parse(data: Any) -> Kept:
    """The file's JSON; a file from before products (one flat entry) is product 0's."""
    if "config_bundle" in data:
        return Kept({0: Overrides(**data)})
    return Kept({int(n): Overrides(**ov) for n, ov in data["products"].items()},
                data.get("product"), data.get("config_product"))
