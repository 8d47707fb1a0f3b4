"""Training recipes: YAML → validated dataclasses, once, at the edge.

Unknown keys and wrong types are errors that name the file and key, so a typo cannot silently
fall back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from device.errors import KenpinError
from device.preprocess import Preprocess
from training.features import FeatureSpec
from training.metric.model import HeadSpec
from training.metric.pair_sampling import NuisanceSpec


AUGMENTS = ("none", "flips", "dihedral")


@dataclass(frozen=True)
class BankSpec:
    """Reference bank: how many patch embeddings the greedy coreset keeps."""

    coreset_size: int = 2000
    projection_dim: int = 128
    # Extra views of each bank image: "flips" (h, v, both: 4 views) or "dihedral" (also the
    # transposes: 8 views). Only for parts whose look does not depend on orientation (textured
    # surfaces); with few good images it fills the bank and the texture statistics.
    augment: str = "none"
    # Extra views of each (augmented) bank image under the line's nuisance (``metric.nuisance``:
    # placement, focus, exposure, noise, tone): with few good images the bank has not seen how far
    # a good part varies between frames.
    nuisance_views: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise KenpinError(f"bank.augment = {self.augment!r}: use one of {list(AUGMENTS)}")
        if not isinstance(self.nuisance_views, int) or not 0 <= self.nuisance_views <= 32:
            raise KenpinError(f"bank.nuisance_views = {self.nuisance_views!r}: use a whole number 0–32")


@dataclass(frozen=True)
class ScoringSpec:
    """How an image's score is made from its patch embeddings."""

    # False: the worst patch's distance to its nearest reference patch (local defects).
    # True: also the Mahalanobis distance of the image's texture statistics (per-channel mean and
    # std of its patch embeddings) to the good images'; each standardized on held-out good images,
    # the larger of the two is the image score (local defects and area-wide surface changes).
    texture: bool = False


@dataclass(frozen=True)
class CalibrationSpec:
    """Threshold from good images held out of the bank."""

    holdout_fraction: float = 0.2
    target_false_reject_rate: float = 0.01


@dataclass(frozen=True)
class ExportSpec:
    """int8 quantization and the parity gate between fp32 and int8."""

    quant_images: int = 64
    quant_methods: tuple[str, ...] = ("MinMax", "Entropy", "Percentile")
    fp32_leading_convs: int = 3
    parity_min_spearman: float = 0.9
    parity_max_mean_abs_diff: float = 0.08
    synthetic_defects_per_image: int = 1
    # int8 variants shipped, by weight bits: onnxruntime's int8 kernels differ by CPU (8-bit weights
    # saturate on AVX2 without VNNI; 7-bit ones lose precision on VNNI), so the station picks on its own
    int8_weights: tuple[int, ...] = (8, 7)
    probe_good: int = 40  # held-out good images stored in the bundle for the station's own check
    probe_defects: int = 24  # synthetic-defect images stored with them


@dataclass(frozen=True)
class MetricSpec:
    """Metric learning of the embedder (``kenpin train-embedding``); unused by the frozen pipeline."""

    loss: str = "triplet"  # "triplet" (margin loss) or "contrastive" (Siamese pairs)
    miner: str = "semi_hard"  # triplet mining: "semi_hard", "hard" or "all"
    positives: str = "twin"  # triplet positive: "twin" (same place, other nuisance view) or "nearest"
                             # (nearest good patch of another image, as the reference bank scores)
    margin: float = 1.0  # triplet margin, in units of the frozen nuisance distance
    neg_margin: float = 3.0  # contrastive: defect patches pushed at least this far
    steps: int = 300
    batch_images: int = 8  # good images per step (x2 views) per process
    crop: int = 192  # px square crop trained on (0 = whole input); the model is convolutional
    lr: float = 1e-3
    backbone_lr_factor: float = 0.1  # learning-rate multiplier of fine-tuned backbone blocks
    weight_decay: float = 1e-4
    drift_weight: float = 0.05  # weight of the pull of good patches back to frozen features
    defect_fraction: float = 0.5  # share of second views that get a painted defect
    defect_scale: float = 1.0
    area_fraction: float = 0.0  # share of painted defects that are area-wide (training.area_defects)
    max_rows: int = 2048  # patch embeddings per step entering the loss (subsampled)
    val_every: int = 50
    val_bank_images: int = 48  # train images forming the validation bank
    val_images: int = 64  # held-out good images (and as many synthetic defects) validated on
    val_coreset: int = 1000
    few_shot: bool = True  # also use train/<defect>/ images when the dataset has them
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    head: HeadSpec = field(default_factory=HeadSpec)
    nuisance: NuisanceSpec = field(default_factory=NuisanceSpec)

    def __post_init__(self) -> None:
        if self.loss not in ("triplet", "contrastive"):
            raise KenpinError(f"metric.loss = {self.loss!r}: use 'triplet' or 'contrastive'")
        if self.positives not in ("twin", "nearest"):
            raise KenpinError(f"metric.positives = {self.positives!r}: use 'twin' or 'nearest'")
        if self.positives == "nearest" and self.loss != "triplet":
            raise KenpinError("metric.positives = 'nearest' needs metric.loss = 'triplet'")
        if self.miner not in ("semi_hard", "hard", "all"):
            raise KenpinError(f"metric.miner = {self.miner!r}: use 'semi_hard', 'hard' or 'all'")
        for key in ("steps", "batch_images", "max_rows", "val_every", "val_bank_images", "val_images", "val_coreset"):
            if getattr(self, key) < 1:
                raise KenpinError(f"metric.{key} = {getattr(self, key)}: must be ≥ 1")
        if self.crop < 0 or self.crop % 32:
            raise KenpinError(f"metric.crop = {self.crop}: use 0 (whole input) or a multiple of 32")
        if not 0 < self.defect_fraction < 1:
            raise KenpinError(f"metric.defect_fraction = {self.defect_fraction}: use (0, 1)")
        if not 0 <= self.area_fraction <= 1:
            raise KenpinError(f"metric.area_fraction = {self.area_fraction}: use 0–1")
        for key in ("margin", "neg_margin", "lr", "defect_scale"):
            if getattr(self, key) <= 0:
                raise KenpinError(f"metric.{key} = {getattr(self, key)}: must be > 0")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a bundle, saved whole in its manifest."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    bank: BankSpec = field(default_factory=BankSpec)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    metric: MetricSpec = field(default_factory=MetricSpec)
    heatmap_sigma: float = 4.0
    seed: int = 0
    batch_size: int = 16
    train_images: int = 0  # use only this many train/good images, a seeded pick (0 = all): few-shot runs

    def __post_init__(self) -> None:
        c = self.calibration
        if not 0.05 <= c.holdout_fraction <= 0.5:
            raise KenpinError(f"calibration.holdout_fraction = {c.holdout_fraction}: use 0.05–0.5")
        if not 0.0 < c.target_false_reject_rate < 0.5:
            raise KenpinError(f"calibration.target_false_reject_rate = {c.target_false_reject_rate}: use (0, 0.5)")
        if self.train_images < 0 or 0 < self.train_images < 4:
            raise KenpinError(f"train_images = {self.train_images}: use 0 (all) or at least 4")
        if self.bank.coreset_size < 1:
            raise KenpinError(f"bank.coreset_size = {self.bank.coreset_size}: must be ≥ 1")
        if self.export.fp32_leading_convs < 0:
            raise KenpinError(f"export.fp32_leading_convs = {self.export.fp32_leading_convs}: must be ≥ 0")
        bad = set(self.export.quant_methods) - {"MinMax", "Entropy", "Percentile", "Distribution"}
        if bad or not self.export.quant_methods:
            raise KenpinError(f"export.quant_methods: {sorted(bad)} unknown; use MinMax, Entropy, Percentile, Distribution")
        w = self.export.int8_weights
        if not w or set(w) - {7, 8} or len(set(w)) != len(w):
            raise KenpinError(f"export.int8_weights = {list(w)}: list 8 and/or 7 (weight bits), each once")
        if self.export.probe_good < 4 or self.export.probe_defects < 1:
            raise KenpinError(f"export.probe_good = {self.export.probe_good}, probe_defects = "
                              f"{self.export.probe_defects}: need at least 4 good and 1 defect probe")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest and checkpoints."""
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, where: str, base: Any = None) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Keys the mapping leaves out keep ``base``'s values (the parent's default for this section,
    which may differ from the class's own: the grade's input is not the gate's)."""
    if not isinstance(data, dict):
        raise KenpinError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KenpinError(f"{where}: unknown key {unknown[0]!r}; known keys are {sorted(fields)}")
    kwargs = {}
    defaults = cls() if base is None else base
    for name, value in data.items():
        default = getattr(defaults, name)
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key, default)
        elif isinstance(default, tuple):
            if not isinstance(value, list):
                raise KenpinError(f"{key} = {value!r}: expected a list")
            kwargs[name] = tuple(value)
        elif isinstance(default, bool) != isinstance(value, bool) or not isinstance(
                value, (type(default), int) if isinstance(default, float) else type(default)):
            raise KenpinError(f"{key} = {value!r}: expected {type(default).__name__}")
        else:
            kwargs[name] = type(default)(value)
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def _lists(data: Any) -> Any:
    """Tuples → lists, as YAML would have given them (a saved recipe dict reads like a file)."""
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    return [_lists(v) for v in data] if isinstance(data, (list, tuple)) else data


def recipe_from_dict(data: dict[str, Any], where: str) -> Recipe:
    """A recipe from its ``to_dict`` form (a manifest's or a checkpoint's), validated like a file."""
    data = _lists(data)
    data.get("preprocess", {}).pop("layout", None)
    return _build(Recipe, data, where)


def load_yaml_dataclass(cls: type, path: str | Path | None) -> Any:
    """Read a YAML file into dataclass ``cls`` (None → its defaults), validated like a recipe."""
    if path is None:
        return cls()
    path = Path(path)
    if not path.is_file():
        raise KenpinError(f"{path}: recipe file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise KenpinError(f"{path}: not valid YAML ({e})") from None
    return _build(cls, data, str(path))


def load_recipe(path: str | Path | None) -> Recipe:
    """Read a recipe YAML (None → the defaults)."""
    return load_yaml_dataclass(Recipe, path)
