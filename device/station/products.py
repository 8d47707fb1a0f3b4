"""The products a station inspects, each with its own loaded bundle, threshold and reject pulse,
and which one is active.

Every product's bundle is verified and proven on this CPU at start-up, so switching is a pointer
swap. A trigger is *bound* when it is queued (free-run: when the frame is captured) to the
product active then — a :class:`Binding` of the product's values and its model — and its part is
judged, recorded and pulsed with exactly those, whatever is switched while it is in flight. That is
what "a switch takes effect between two parts, never during one" means here.

Threshold changes and bundle swaps from the dashboard apply to the active product; each product
keeps its own threshold history and roll-back bundle.
"""
from __future__ import annotations

import logging
import operator
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.bundle import load_bundle
from device.errors import KenpinError
from device.selfcheck import self_check
from device.station.config import StationConfig
from device.station.model import Model
from device.station.product_settings import Product
from device.station.overrides import Kept, Overrides
from device.station.product_settings import ProductSection

log = logging.getLogger("kenpin.station")


@dataclass(frozen=True)
class Binding:
    """What one part is judged with: its product as it was when its trigger came, and that product's model."""

    product: Product
    model: Model


@dataclass
class _Slot:
    """One product's run-time state; changed only under :class:`ProductTable`'s lock."""

    section: ProductSection
    config_threshold: float
    pulse_ms: float
    delay_ms: float
    model: Model
    threshold: float
    previous: Model | None = None
    history: list[float] = field(default_factory=list)
    binding: Binding = field(init=False)

    def __post_init__(self) -> None:
        self.rebind()

    def rebind(self) -> None:
        """Make the binding new parts get (immutable, so a part in flight keeps the one it got)."""
        s = self.section
        self.binding = Binding(Product(s.number, s.label, self.model.bundle.bundle_id, self.threshold,
                                       self.pulse_ms, self.delay_ms), self.model)

    def overrides(self) -> Overrides:
        return Overrides(str(self.section.bundle), self.config_threshold, str(self.model.bundle.root), self.threshold)


class ProductTable:
    """All products in config order and the active one; thread-safe (triggers, PLC, dashboard)."""

    def __init__(self, slots: list[_Slot], active: int) -> None:
        self._slots = {s.section.number: s for s in slots}
        self._lock = threading.Lock()
        self._active = self._slots[active]

    def bind(self) -> Binding:
        """The binding for a part announced now (one read of the active product's binding)."""
        with self._lock:
            return self._active.binding

    @property
    def active(self) -> Product:
        return self.bind().product

    def all(self) -> list[Product]:
        """Every product in config order."""
        with self._lock:
            return [s.binding.product for s in self._slots.values()]

    def switch(self, number: Any) -> tuple[Product, Product]:
        """Make product ``number`` active for the parts announced from now on; (previous, new).
        An unknown number raises KenpinError and changes nothing."""
        with self._lock:
            slot = self._slots.get(_whole(number))
            if slot is None:
                known = ", ".join(f"{n} ({s.section.label})" for n, s in self._slots.items())
                raise KenpinError(f"product {number!r}: no such product on this station; it knows {known}")
            old, self._active = self._active, slot
            return old.binding.product, slot.binding.product

    @property
    def model(self) -> Model:
        """The active product's model."""
        return self.bind().model

    @property
    def previous_model(self) -> Model | None:
        """The active product's roll-back bundle, if a swap made one."""
        with self._lock:
            return self._active.previous

    def swap_model(self, model: Model, number: int) -> tuple[Product, Model]:
        """Put ``model`` in for product ``number``; the model it replaces is kept for roll-back."""
        with self._lock:
            slot = self._slots[number]
            old, slot.previous, slot.model = slot.model, slot.model, model
            slot.rebind()
            return slot.binding.product, old

    def roll_back(self) -> tuple[Binding, Model]:
        """Swap the active product's previous model back in; (its binding now, the model it replaced)."""
        with self._lock:
            slot = self._active
            if slot.previous is None:
                raise KenpinError(f"product {slot.section.number} ({slot.section.label}): no previous bundle "
                                  "to roll back to; activate a bundle first")
            slot.model, slot.previous = slot.previous, slot.model
            slot.rebind()
            return slot.binding, slot.previous

    def set_threshold(self, value: float) -> tuple[Product, float]:
        """The active product's new threshold; (product now, the threshold before)."""
        with self._lock:
            slot = self._active
            old, slot.threshold = slot.threshold, value
            slot.history.append(old)
            slot.rebind()
            return slot.binding.product, old

    def undo_threshold(self) -> tuple[Product, float]:
        """Restore the active product's threshold before its last change; (product now, the one undone)."""
        with self._lock:
            slot = self._active
            if not slot.history:
                raise KenpinError(f"product {slot.section.number} ({slot.section.label}): no threshold change to undo")
            old, slot.threshold = slot.threshold, slot.history.pop()
            slot.rebind()
            return slot.binding.product, old

    def kept(self, config_product: int) -> Kept:
        """What a restart should come back to."""
        with self._lock:
            return Kept({n: s.overrides() for n, s in self._slots.items()}, self._active.section.number, config_product)


def _whole(number: Any) -> int | None:
    """``number`` as a product number: any whole number type a server hands over (a protocol
    library's integers too), never a bool or a string; None when it is not one."""
    if isinstance(number, bool):
        return None
    try:
        return operator.index(number)
    except TypeError:
        return None


def configured(config: StationConfig) -> dict[int, tuple[str, float]]:
    """Each product's bundle and threshold as the config sets them (what run-time changes are checked against)."""
    return {p.number: (str(p.bundle), _threshold(p, config)) for p in config.product_sections()}


def _threshold(p: ProductSection, config: StationConfig) -> float:
    return p.threshold if p.threshold is not None else config.decision.threshold


def load_model(path: Path, config: StationConfig, store: Any) -> Model:
    """Verify a bundle, prove it on this CPU (the self-check chooses the variant), load it; a bundle
    without the quality gate that ``config`` needs (a burst, the raw stream) is refused."""
    settings = config.bundle
    bundle = load_bundle(path)
    check = self_check(bundle, settings.threads, settings.precision)
    store.audit("self_check", {"bundle": bundle.bundle_id, **check.to_dict()})
    model = Model(bundle, check, settings.threads)
    needed = config.gate_required_by
    if needed and model.gate is None:
        raise KenpinError(f"{path}: this bundle has no quality gate, and {needed}; add one with `kenpin train-ranker "
                          f"--bundle {path} --data DIR`, or leave that setting at its default")
    if model.gate is not None and not model.gate.follows_verdicts:
        # said once per load, not per frame: the gate still works, but its floors come from clean frames'
        # scores alone, not from the degradations that would flip a verdict
        log.warning("bundle %s: its quality gate was calibrated the old way (on clean frames' scores; no verdict-flip "
                    "calibration in its manifest) and gates as before", bundle.bundle_id)
    return model


def load_products(config: StationConfig, store: Any, kept: Kept) -> ProductTable:
    """Every product's bundle verified and loaded (the last one activated at run time if it still
    loads, else the config's); a product whose bundle fails is a start-up error naming it."""
    slots = []
    for p in config.product_sections():
        ov = kept.products.get(p.number)
        try:
            model = _start_model(p, config, store, ov)
        except KenpinError as e:
            if not config.products:  # the station's one implicit product: the bundle's own message
                raise
            raise KenpinError(f"product {p.number} ({p.label}) cannot start with its bundle {p.bundle}: {e}") from None
        slots.append(_Slot(p, _threshold(p, config),
                           p.pulse_ms if p.pulse_ms is not None else config.actuator.pulse_ms,
                           p.delay_ms if p.delay_ms is not None else config.actuator.delay_ms,
                           model, ov.threshold if ov else _threshold(p, config)))
    return ProductTable(slots, kept.product if kept.product is not None else config.start_product)


def _start_model(p: ProductSection, config: StationConfig, store: Any, ov: Overrides | None) -> Model:
    """The bundle last activated at run time for this product if it still loads, else the configured one."""
    if ov is not None and ov.bundle != str(p.bundle):
        try:
            return load_model(Path(ov.bundle), config, store)
        except KenpinError as e:
            log.warning("product %d: the bundle last activated from the dashboard does not load (%s); starting "
                        "with its bundle from the config", p.number, e)
            store.audit("restore_refused", {"product": p.number, "bundle": ov.bundle, "reason": str(e)})
    return load_model(p.bundle, config, store)
