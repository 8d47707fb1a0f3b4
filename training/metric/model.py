"""The trained embedder: the frozen patch embedder, optionally its last blocks, and a learned head.

The head is residual with its last layer zero-initialised, so before the first step the trained
embedder *is* the frozen one (up to one constant scale, which changes no nearest-neighbour
ranking): step 0 of every run is the frozen baseline, and model selection can only keep training
that beat it on validation. BatchNorm statistics stay frozen (small crop batches would otherwise
drag them off ImageNet's), so ``train()`` leaves the backbone in eval mode.

With ``head.out_dim`` the head ends in a trained 1x1 projection to fewer dimensions, started as the
PCA of good patches (``init_projection``): step 0 is then the compact (PCA) embedding, and training
moves the projection towards what separates the line's defects, in the space the bank is built in.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    out_dim: int = 0  # >0: a trained projection to this many dimensions (0: the embedding's own)

    def __post_init__(self) -> None:
        if self.out_dim < 0:
            raise KenpinError(f"metric.head.out_dim = {self.out_dim}: use 0 (the embedding's own dimensions) "
                              "or the number of dimensions to project to")
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
        # Old checkpoints have no projection: it exists only when asked for, so they load unchanged.
        self.project = nn.Conv2d(features.dim, head.out_dim, 1) if head.out_dim else None
        self.register_buffer("scale", torch.ones(()))

    def train(self, mode: bool = True) -> "TrainedEmbedder":
        super().train(mode)
        self.frozen.backbone.eval()  # BatchNorm keeps ImageNet statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (partly trained) backbone's patch features, before the head."""
        return self.frozen(x)

    def projected(self, f: torch.Tensor) -> torch.Tensor:
        """Head and projection (when there is one) applied to :meth:`features`, before the scale."""
        h = self.head(f)
        return h if self.project is None else self.project(h)

    def embed_features(self, f: torch.Tensor) -> torch.Tensor:
        """Head, projection, scale and (image level) pooling applied to :meth:`features`."""
        e = self.projected(f) / self.scale
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

    def trained_parameters(self) -> list[nn.Parameter]:
        """The head's and the projection's parameters (the backbone's trained blocks aside)."""
        return [*self.head.parameters(), *([] if self.project is None else self.project.parameters())]


def init_projection(model: TrainedEmbedder, good_patches: np.ndarray, seed: int) -> None:
    """Start ``model``'s projection as the PCA of good patches (PxC, the frozen features), so that
    before training the model outputs exactly what a ``reduction.dim`` bundle's PCA would."""
    from training.reduction import check_dim, fit_reduction

    dim = model.head_spec.out_dim
    check_dim(dim, good_patches.shape[1], good_patches.shape[0], "metric.head.out_dim")
    r = fit_reduction(good_patches, dim, whiten=False, seed=seed)
    with torch.no_grad():
        model.project.weight.copy_(torch.from_numpy(r.weight).view(dim, -1, 1, 1))
        model.project.bias.copy_(torch.from_numpy(r.bias))


class TrainingView(nn.Module):
    """What one training step runs, as a single forward (DistributedDataParallel only syncs
    gradients of what goes through ``forward``): (embeddings, frozen reference embeddings).

    The reference is what the untrained embedder gives for the same input (for the drift penalty):
    the head's input when only the head trains, else a frozen copy of the backbone; with a
    projection, that through a frozen copy of the projection as it started (the PCA).
    """

    def __init__(self, model: TrainedEmbedder) -> None:
        super().__init__()
        self.model = model
        self.reference = copy.deepcopy(model.frozen).eval() if model.trains_backbone() else None
        if self.reference is not None:
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.start = None if model.project is None else copy.deepcopy(model.project)
        if self.start is not None:
            self.start.requires_grad_(False)

    def train(self, mode: bool = True) -> "TrainingView":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.features(x)
        with torch.no_grad():
            ref = (f if self.reference is None else self.reference(x)).detach()
            ref = (ref if self.start is None else self.start(ref)) / self.model.scale
        return self.model.projected(f) / self.model.scale, ref


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
    theirs = ckpt.get("recipe", {}).get("metric", {}).get("head", {}).get("out_dim", 0)
    if theirs != head.out_dim:  # else load_state_dict's shape error: say which key instead
        raise KenpinError(f"{path}: trained with metric.head.out_dim = {theirs}, but the recipe says {head.out_dim}; "
                          "train with the recipe the embedder was trained with")
    model = TrainedEmbedder(features, head)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), ckpt
