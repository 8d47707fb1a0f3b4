"""The ranker recipe (``configs/recipe_ranker.yaml``): what each role trains on and how.

``quality`` is the capture-quality gate (degraded good images, a floor per family of
degradations); ``grade`` is the ranker learnt from an operator file; ``export`` is the int8
quantization and its parity gate. Unknown keys and wrong types are refused naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.ranker_input import RankerInput
from device.schema import need
from export.ranker import RankerExportSpec
from training.rank.degrade import FAMILIES, KINDS


@dataclass(frozen=True)
class TrainSpec:
    """Optimization of a ranker."""

    steps: int = 600
    batch_pairs: int = 32
    lr: float = 0.003
    weight_decay: float = 0.0001
    width: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("steps", "batch_pairs", "width"):
            need(getattr(self, key) >= 1, key, getattr(self, key), "must be ≥ 1")
        need(self.width % 2 == 0, "width", self.width, "must be even")
        need(self.lr > 0, "lr", self.lr, "must be > 0")


@dataclass(frozen=True)
class QualitySpec:
    """The capture-quality gate: what it trains on and how its floor is set."""

    input: RankerInput = field(default_factory=RankerInput)  # whole-frame stats off: see recipe_ranker.yaml
    images: int = 300  # train/good images used (a seeded pick; 0 = all)
    holdout_fraction: float = 0.2  # of those, kept out of training to set the floor
    kinds: tuple[str, ...] = KINDS
    # family → kinds: one score column (and one floor) per family that has a kind in ``kinds``
    families: dict[str, Any] = field(default_factory=lambda: dict(FAMILIES))
    levels_per_kind: int = 2
    uint8_share: float = 0.5
    cross_share: float = 0.25
    target_false_retake_rate: float = 0.02
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=3000))

    def __post_init__(self) -> None:
        need(bool(self.kinds) and set(self.kinds) <= set(KINDS), "kinds", list(self.kinds), f"use some of {list(KINDS)}")
        self._check_families()
        need(0.05 <= self.holdout_fraction <= 0.5, "holdout_fraction", self.holdout_fraction, "use 0.05–0.5")
        need(0 < self.target_false_retake_rate < 0.5, "target_false_retake_rate", self.target_false_retake_rate,
             "use (0, 0.5)")
        for key in ("uint8_share", "cross_share"):
            need(0 <= getattr(self, key) <= 1, key, getattr(self, key), "use 0–1")
        need(self.levels_per_kind >= 1, "levels_per_kind", self.levels_per_kind, "must be ≥ 1")
        need(self.images == 0 or self.images >= 10, "images", self.images, "use 0 (all) or at least 10")

    def _check_families(self) -> None:
        seen: dict[str, str] = {}
        for name, kinds in self.families.items():
            need(isinstance(kinds, (list, tuple)) and bool(kinds), f"families.{name}", kinds, "expected a list of kinds")
            for k in kinds:
                need(k in KINDS, f"families.{name}", list(kinds), f"kind {k!r} unknown; use some of {list(KINDS)}")
                need(k not in seen, f"families.{name}", list(kinds), f"kind {k!r} is in both {seen.get(k)!r} and {name!r}; put it in one")
                seen[k] = name
        object.__setattr__(self, "families", {n: tuple(k) for n, k in self.families.items()})  # lists → tuples
        orphans = [k for k in self.kinds if k not in seen]
        need(not orphans, "kinds", list(self.kinds), f"{orphans} belong to no family; add them to one under families")

    def columns(self) -> list[tuple[str, tuple[str, ...]]]:
        """The model's output columns: (family, its trained kinds), for families with a trained kind."""
        out = [(name, tuple(k for k in kinds if k in self.kinds)) for name, kinds in self.families.items()]
        return [(name, kinds) for name, kinds in out if kinds]


@dataclass(frozen=True)
class GradeSpec:
    """The grade ranker learnt from an operator file."""

    input: RankerInput = field(default_factory=lambda: RankerInput(32, 0, "embedding"))  # see the recipe
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=600, batch_pairs=64, weight_decay=0.01, width=16))


@dataclass(frozen=True)
class RankerRecipe:
    """``configs/recipe_ranker.yaml``, validated once."""

    quality: QualitySpec = field(default_factory=QualitySpec)
    grade: GradeSpec = field(default_factory=GradeSpec)
    export: RankerExportSpec = field(default_factory=RankerExportSpec)
    seed: int = 0


def load_ranker_recipe(path: str | Path | None) -> RankerRecipe:
    """Read a ranker recipe YAML (None → defaults); unknown keys and wrong types name the key."""
    from training.recipe import load_yaml_dataclass

    return load_yaml_dataclass(RankerRecipe, path)
