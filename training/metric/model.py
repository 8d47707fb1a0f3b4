"""The trained embedder: the frozen patch embedder, optionally its last blocks, and a learned head.

The head is residual with its last layer zero-initialised, so before the first step the trained
embedder *is* the frozen one (up to one constant scale, which changes no nearest-neighbour
ranking): step 0 of every run is the frozen baseline, and model selection can only keep training
that beat it on validation. BatchNorm statistics stay frozen (small crop batches would otherwise
drag them off ImageNet's), so ``train()`` leaves the backbone in eval mode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from device.errors import KenpinError
from training.features import FeatureSpec, PatchEmbedder


@dataclass(frozen=True)
class HeadSpec:
    """Shape of the trained part of the embedder."""

    hidden: int = 256  # width of the head's 1x1 conv layer
    finetune_from_block: int = 16  # backbone blocks >= this are trained too (16: backbone frozen)
    level: str = "patch"  # "patch": one embedding per patch; "image": one per image (mean-pooled)

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise KenpinError(f"metric.head.hidden = {self.hidden}: must be ≥ 1")
        if not 0 <= self.finetune_from_block <= 16:
            raise KenpinError(f"metric.head.finetune_from_block = {self.finetune_from_block}: use 0–16 (16 = frozen backbone)")
        if self.level not in ("patch", "image"):
            raise KenpinError(f"metric.head.level = {self.level!r}: use 'patch' or 'image'")


class ResidualHead(nn.Module):
    """x + W2·relu(W1·x) per patch (1x1 convolutions); W2 starts at zero, so the head starts as identity."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(dim, hidden, 1)
        self.project = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.relu(self.expand(x)))


class TrainedEmbedder(nn.Module):
    """Image tensor Nx3xHxW → embeddings NxCxhxw (patch level) or NxCx1x1 (image level).

    ``scale`` divides the output so that the losses' margins are in units of the typical distance
    between two nuisance views of the same good patch (set once, from data, before training).
    """

    def __init__(self, features: FeatureSpec, head: HeadSpec) -> None:
        super().__init__()
        if features.backbone != "lite0":  # finetune_from_block and the validated recipes count Lite0's blocks
            raise KenpinError(f"features.backbone = {features.backbone!r}: metric learning (kenpin train-embedding) "
                              "is implemented for lite0; use the frozen embedder (kenpin train) with this backbone")
        self.spec, self.head_spec = features, head
        self.frozen = PatchEmbedder(features)
        for i, block in enumerate(self.frozen.backbone._blocks):
            for p in block.parameters():
                p.requires_grad_(i >= head.finetune_from_block)
        self.head = ResidualHead(features.dim, head.hidden)
        self.register_buffer("scale", torch.ones(()))

    def train(self, mode: bool = True) -> "TrainedEmbedder":
        super().train(mode)
        self.frozen.backbone.eval()  # BatchNorm keeps ImageNet statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (partly trained) backbone's patch features, before the head."""
        return self.frozen(x)

    def embed_features(self, f: torch.Tensor) -> torch.Tensor:
        """Head, scale and (image level) pooling applied to :meth:`features`."""
        e = self.head(f) / self.scale
        return e.mean((2, 3), keepdim=True) if self.head_spec.level == "image" else e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(x))

    @property
    def stride(self) -> int:
        """Patch stride of the output grid (image level: the whole image is one patch)."""
        return self.spec.stride

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output grid for an input of ``height`` x ``width``."""
        return (1, 1) if self.head_spec.level == "image" else (height // self.stride, width // self.stride)

    def trains_backbone(self) -> bool:
        return self.head_spec.finetune_from_block < len(self.frozen.backbone._blocks)


class TrainingView(nn.Module):
    """What one training step runs, as a single forward (DistributedDataParallel only syncs
    gradients of what goes through ``forward``): (embeddings, frozen reference embeddings).

    The reference is what the untrained embedder gives for the same input (for the drift penalty):
    the head's input when only the head trains, else a frozen copy of the backbone.
    """

    def __init__(self, model: TrainedEmbedder) -> None:
        super().__init__()
        self.model = model
        self.reference = copy.deepcopy(model.frozen).eval() if model.trains_backbone() else None
        if self.reference is not None:
            for p in self.reference.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "TrainingView":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.features(x)
        with torch.no_grad():
            ref = (f if self.reference is None else self.reference(x)).detach() / self.model.scale
        e = self.model.head(f) / self.model.scale
        return e, ref


def save_embedder(path: Path, model: TrainedEmbedder, recipe: dict[str, Any], info: dict[str, Any]) -> None:
    """The selected embedder as a checkpoint ``kenpin train --embedder`` can load."""
    torch.save({"kind": "kenpin-trained-embedder", "recipe": recipe, "info": info,
                "state_dict": model.state_dict()}, path)


def load_embedder(path: Path, features: FeatureSpec, head: HeadSpec) -> tuple[TrainedEmbedder, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_embedder`; the caller checks its recipe matches."""
    if not Path(path).is_file():
        raise KenpinError(f"{path}: embedder checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise KenpinError(f"{path}: not a readable kenpin embedder checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "kenpin-trained-embedder":
        raise KenpinError(f"{path}: not a kenpin embedder checkpoint (written by kenpin train-embedding)")
    model = TrainedEmbedder(features, head)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), ckpt
