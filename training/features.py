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

from training.backbone import EfficientNetLite0, load_lite0_imagenet

# Output channels and stride of each EfficientNet-Lite0 block.
BLOCK_CHANNELS = {i: c for i, c in enumerate([16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320])}
BLOCK_STRIDES = {i: s for i, s in enumerate([2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32])}


@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone blocks feed the patch embedding, and how far each patch looks around."""

    blocks: tuple[int, ...] = (10, 14)
    aggregate: int = 3

    def __post_init__(self) -> None:
        from device.errors import KenpinError

        if not self.blocks or any(b not in BLOCK_CHANNELS for b in self.blocks):
            raise KenpinError(f"features.blocks = {list(self.blocks)}: each must be a block index 0–15")
        if self.aggregate < 1 or self.aggregate % 2 == 0:
            raise KenpinError(f"features.aggregate = {self.aggregate}: must be an odd number ≥ 1")

    @property
    def dim(self) -> int:
        return sum(BLOCK_CHANNELS[b] for b in self.blocks)

    @property
    def stride(self) -> int:
        """Patch grid stride: that of the shallowest block used."""
        return min(BLOCK_STRIDES[b] for b in self.blocks)


class PatchEmbedder(nn.Module):
    """Image tensor Nx3xHxW → patch embeddings NxCx(H/s)x(W/s)."""

    def __init__(self, spec: FeatureSpec, backbone: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone if backbone is not None else load_lite0_imagenet()
        self.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output grid for an input of ``height`` x ``width``."""
        return height // self.spec.stride, width // self.spec.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.forward_blocks(x, set(self.spec.blocks))
        size = maps[min(self.spec.blocks, key=lambda b: BLOCK_STRIDES[b])].shape[-2:]
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
