"""Training recipes: YAML → validated dataclasses, once, at the edge.

Unknown keys and wrong types are errors that name the file, line and key (``device.schema``),
so a typo cannot silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.preprocess import Preprocess
from device.schema import Document, load, need, read_yaml
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
        need(self.augment in AUGMENTS, "augment", self.augment, f"use one of {list(AUGMENTS)}")
        need(isinstance(self.nuisance_views, int) and 0 <= self.nuisance_views <= 32, "nuisance_views",
             self.nuisance_views, "use a whole number 0–32")


@dataclass(frozen=True)
class ReductionSpec:
    """A compact embedding: PCA of good bank patches appended to the model as a 1x1 convolution,
    so the bank, threshold and station search all live in ``dim`` dimensions (0: the full one)."""

    dim: int = 0
    whiten: bool = False  # scale each kept direction to unit variance (Mahalanobis in that subspace)
    # One of the ``dim`` channels carries each patch's distance to the kept subspace: a defect
    # often lives in the directions good parts hardly vary in, which PCA drops.
    residual: bool = False
    # Instead of PCA: the directions where synthetic defects' nearest-good residuals are largest
    # against good patches' own (a generalized eigenproblem); ``ridge`` shrinks the good residuals'
    # covariance toward its mean variance (large: the defects' residual directions alone).
    discriminant: bool = False
    ridge: float = 1.0

    def __post_init__(self) -> None:
        need(self.dim >= 0, "dim", self.dim, "use 0 (the full embedding) or the number of dimensions kept")
        need(self.ridge > 0, "ridge", self.ridge, "must be > 0")
        need(not (self.discriminant and (self.whiten or self.residual)), "discriminant", self.discriminant,
             "is a reduction of its own; leave whiten and residual false with it")


@dataclass(frozen=True)
class ScoringSpec:
    """How an image's score is made from its patch embeddings."""

    # False: the worst patch's distance to its nearest reference patch (local defects).
    # True: also the Mahalanobis distance of the image's texture statistics (per-channel mean and
    # std of its patch embeddings) to the good images'; each standardized on held-out good images,
    # the larger of the two is the image score (local defects and area-wide surface changes).
    texture: bool = False
    # The bank search of the int8 variants: "fp32" (one BLAS GEMM) or "int8" (a search graph per
    # variant in the bundle, its product on the int8 kernels; device.graph_search says why).
    search: str = "fp32"

    def __post_init__(self) -> None:
        need(self.search in ("fp32", "int8"), "search", self.search, "use 'fp32' or 'int8'")


@dataclass(frozen=True)
class CalibrationSpec:
    """Threshold from good images held out of the bank."""

    holdout_fraction: float = 0.2
    target_false_reject_rate: float = 0.01


QUANT_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")


@dataclass(frozen=True)
class QuantSpec:
    """int8 quantization and the parity it must keep with fp32 (the embedder's and the rankers')."""

    quant_images: int = 64  # model inputs calibrating int8 activation ranges
    quant_methods: tuple[str, ...] = ("MinMax", "Entropy", "Percentile")
    fp32_leading_convs: int = 3  # leading convolutions kept fp32
    parity_min_spearman: float = 0.9
    parity_max_mean_abs_diff: float = 0.08

    def __post_init__(self) -> None:
        need(self.quant_images >= 1, "quant_images", self.quant_images, "must be ≥ 1")
        need(bool(self.quant_methods) and set(self.quant_methods) <= set(QUANT_METHODS), "quant_methods",
             list(self.quant_methods), f"use some of {', '.join(QUANT_METHODS)}")
        need(self.fp32_leading_convs >= 0, "fp32_leading_convs", self.fp32_leading_convs, "must be ≥ 0")


@dataclass(frozen=True)
class ExportSpec(QuantSpec):
    """The embedder's export: int8 variants, the parity gate and the probes the station checks with."""

    synthetic_defects_per_image: int = 1
    # int8 variants shipped, by weight bits: onnxruntime's int8 kernels differ by CPU (8-bit weights
    # saturate on AVX2 without VNNI; 7-bit ones lose precision on VNNI), so the station picks on its own
    int8_weights: tuple[int, ...] = (8, 7)
    probe_good: int = 40  # held-out good images stored in the bundle for the station's own check
    probe_defects: int = 24  # synthetic-defect images stored with them
    # the probe set's size limit: large inputs keep fewer probes (both kinds in proportion)
    probe_max_mb: float = 5.0
    # and the start-up check's Pi 4 ESTIMATE limit: a large model keeps fewer probes
    probe_max_pi4_s: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.int8_weights
        need(bool(w) and set(w) <= {7, 8} and len(set(w)) == len(w), "int8_weights", list(w),
             "list 8 and/or 7 (weight bits), each once")
        need(self.probe_good >= 4, "probe_good", self.probe_good, "need at least 4 good probes")
        need(self.probe_defects >= 1, "probe_defects", self.probe_defects, "need at least 1 defect probe")
        need(self.probe_max_mb > 0, "probe_max_mb", self.probe_max_mb, "must be > 0 (megabytes)")
        need(self.probe_max_pi4_s > 0, "probe_max_pi4_s", self.probe_max_pi4_s, "must be > 0 (seconds)")


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
    val_real_fraction: float = 0.0  # of each type's train/<defect>/ images held out to validate on (0: none)
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    head: HeadSpec = field(default_factory=HeadSpec)
    nuisance: NuisanceSpec = field(default_factory=NuisanceSpec)

    def __post_init__(self) -> None:
        need(self.loss in ("triplet", "contrastive"), "loss", self.loss, "use 'triplet' or 'contrastive'")
        need(self.positives in ("twin", "nearest"), "positives", self.positives, "use 'twin' or 'nearest'")
        need(self.positives != "nearest" or self.loss == "triplet", "positives", self.positives,
             "'nearest' needs metric.loss = 'triplet'")
        need(self.miner in ("semi_hard", "hard", "all"), "miner", self.miner, "use 'semi_hard', 'hard' or 'all'")
        for key in ("steps", "batch_images", "max_rows", "val_every", "val_bank_images", "val_images", "val_coreset"):
            need(getattr(self, key) >= 1, key, getattr(self, key), "must be ≥ 1")
        need(self.crop >= 0 and self.crop % 32 == 0, "crop", self.crop, "use 0 (whole input) or a multiple of 32")
        need(0 < self.defect_fraction < 1, "defect_fraction", self.defect_fraction, "use (0, 1)")
        need(0 <= self.area_fraction <= 1, "area_fraction", self.area_fraction, "use 0–1")
        need(0 <= self.val_real_fraction < 1, "val_real_fraction", self.val_real_fraction,
             "use 0 (train on every real defect) up to but not 1 (some must train)")
        for key in ("margin", "neg_margin", "lr", "defect_scale"):
            need(getattr(self, key) > 0, key, getattr(self, key), "must be > 0")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a bundle, saved whole in its manifest."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    bank: BankSpec = field(default_factory=BankSpec)
    reduction: ReductionSpec = field(default_factory=ReductionSpec)
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
        need(0.05 <= c.holdout_fraction <= 0.5, "calibration.holdout_fraction", c.holdout_fraction, "use 0.05–0.5")
        need(0.0 < c.target_false_reject_rate < 0.5, "calibration.target_false_reject_rate",
             c.target_false_reject_rate, "use (0, 0.5)")
        need(self.train_images == 0 or self.train_images >= 4, "train_images", self.train_images,
             "use 0 (all) or at least 4")
        need(self.bank.coreset_size >= 1, "bank.coreset_size", self.bank.coreset_size, "must be ≥ 1")
        need(self.metric.head.out_dim < self.features.dim, "metric.head.out_dim", self.metric.head.out_dim,
             f"must be below the embedding's {self.features.dim} dimensions (0 keeps them all)")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest and checkpoints."""
        return dataclasses.asdict(self)


def _lists(data: Any) -> Any:
    """Tuples → lists, as YAML would have given them (a saved recipe dict reads like a file)."""
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    return [_lists(v) for v in data] if isinstance(data, (list, tuple)) else data


def recipe_from_dict(data: dict[str, Any], where: str) -> Recipe:
    """A recipe from its ``to_dict`` form (a manifest's or a checkpoint's), validated like a file."""
    data = _lists(data)
    data.get("preprocess", {}).pop("layout", None)
    return load(Recipe, Document(data, where))


def load_yaml_dataclass(cls: type, path: str | Path | None) -> Any:
    """Read a YAML file into dataclass ``cls`` (None → its defaults); mistakes name file, line and key."""
    if path is None:
        return cls()
    return load(cls, read_yaml(path, "recipe file"))


def load_recipe(path: str | Path | None) -> Recipe:
    """Read a recipe YAML (None → the defaults)."""
    return load_yaml_dataclass(Recipe, path)
