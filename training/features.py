"""Patch embeddings: locally aggregated intermediate maps of the frozen backbone.

Deeper stages (stride 16 and 32) described magnetic-tile texture better than stride 4/8 ones;
a 3x3 average gives each patch its neighbourhood, so a defect straddling two patches still counts.
The whole thing is one module so the exported ONNX graph *is* the embedder the station runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.backbone import STAGES, EfficientNetLite0, block_table, load_imagenet

# Output channels and stride of each EfficientNet-Lite0 block.
BLOCK_CHANNELS = {i: c for i, (c, _) in enumerate(block_table("lite0"))}
BLOCK_STRIDES = {i: s for i, (_, s) in enumerate(block_table("lite0"))}


@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone and which of its blocks feed the patch embedding, and how far each patch
    looks around. Block indices are the backbone's own (Lite0's (10, 14) — the ends of its
    stride-16 and stride-32 stages — are (14, 19) in Lite1 and Lite2)."""

    blocks: tuple[int, ...] = (10, 14)
    aggregate: int = 3
    backbone: str = "lite0"

    def __post_init__(self) -> None:
        from device.errors import KenpinError

        if self.backbone not in STAGES:
            raise KenpinError(f"features.backbone = {self.backbone!r}: use one of {sorted(STAGES)}")
        n = len(self.table)
        if not self.blocks or any(not isinstance(b, int) or not 0 <= b < n for b in self.blocks):
            raise KenpinError(f"features.blocks = {list(self.blocks)}: each must be a block index 0–{n - 1} "
                              f"of {self.backbone}")
        if self.aggregate < 1 or self.aggregate % 2 == 0:
            raise KenpinError(f"features.aggregate = {self.aggregate}: must be an odd number ≥ 1")

    @property
    def table(self) -> list[tuple[int, int]]:
        """(channels, stride) of each block of the backbone."""
        return block_table(self.backbone)

    @property
    def dim(self) -> int:
        return sum(self.table[b][0] for b in self.blocks)

    @property
    def stride(self) -> int:
        """Patch grid stride: that of the shallowest block used."""
        return min(self.table[b][1] for b in self.blocks)


class PatchEmbedder(nn.Module):
    """Image tensor Nx3xHxW → patch embeddings NxCx(H/s)x(W/s)."""

    def __init__(self, spec: FeatureSpec, backbone: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone if backbone is not None else load_imagenet(spec.backbone)
        self.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output grid for an input of ``height`` x ``width``."""
        return height // self.spec.stride, width // self.spec.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.forward_blocks(x, set(self.spec.blocks))
        size = maps[min(self.spec.blocks, key=lambda b: self.spec.table[b][1])].shape[-2:]
        k = self.spec.aggregate
        parts = []
        for b in self.spec.blocks:
            m = maps[b]
            if k > 1:
                m = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            parts.append(m)
        return torch.cat(parts, dim=1)
