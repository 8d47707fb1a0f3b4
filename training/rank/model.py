"""RankNet (Burges et al. 2005): a scorer trained so that sigmoid(s_a - s_b) = P(a ranks above b).

The model is a small CNN over :class:`device.ranker_input.RankerInput` (a gray thumbnail of the whole
frame plus native-resolution crops). The crop branch starts with a fixed high-pass filter and pools
log-energies, so it sees the per-pixel signal of sensor noise and the loss of fine texture under
blur whatever the scene; the thumbnail branch sees exposure, glare and occlusion. With
``input.stats`` the whole-frame statistics vector (native resolution, computed in
``device.ranker_input``) is sliced from the input's last plane and joins the pooled features before
the head: no convolution touches it, so the int8 export keeps that path fp32.

Run it with ``kenpin train-ranker`` (see ``configs/recipe_ranker.yaml``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from device.ranker_input import RankerInput


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class RankScorer(nn.Module):
    """N x (1 + crops [+ 1 statistics plane]) x S x S → N x outputs scores (higher = better).

    Several outputs share the convolutions and each has its own head: a capture-quality family
    (noise, sharpness, exposure…) ranks with its own column, so families whose degradations move
    the features in opposite directions do not fight over one score.
    """

    LEVELS = 3  # Haar levels whose detail energies the crop branch measures

    def __init__(self, inp: RankerInput, width: int = 16, outputs: int = 1) -> None:
        super().__init__()
        self.crops = inp.crops
        self.n_stats = inp.n_stats
        # Fixed Laplacian high-pass, scaled so texture residuals (~0.02) land near unit range.
        lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]) * 8.0
        self.highpass = nn.Conv2d(1, 1, 3, 1, 1, bias=False)
        self.highpass.weight.data.copy_(lap.view(1, 1, 3, 3))
        # Fixed orthonormal Haar analysis (LL, LH, HL, HH): white noise adds σ² to every detail band,
        # texture and blur shape their ratio, so log band energies separate the two.
        haar = torch.tensor([[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]]) / 2.0
        self.haar = nn.Conv2d(1, 4, 2, 2, bias=False)
        self.haar.weight.data.copy_(haar.view(4, 1, 2, 2).float())
        for fixed in (self.highpass, self.haar):
            fixed.weight.requires_grad_(False)
        self.thumb = nn.Sequential(_conv(1, width // 2, 2), _conv(width // 2, width, 2), _conv(width, 2 * width, 2))
        self.fine = nn.Sequential(_conv(2, width // 2, 2), _conv(width // 2, width, 2))
        n_fine = width + 3 * self.LEVELS if inp.crops else 0
        n_in = 4 * width + n_fine + self.n_stats
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(n_in, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1))
                                   for _ in range(outputs))
        # A linear path from the statistics to the score as well: "more fine-band energy at equal
        # everything else = noisier" is a monotone rule the head need not rebuild from ReLUs.
        self.stats_linear = nn.Linear(self.n_stats, outputs, bias=False) if self.n_stats else None

    def band_energies(self, c: torch.Tensor) -> torch.Tensor:
        """(M, 1, S, S) crops → (M, 3 * LEVELS) log energies of the Haar detail bands, shifted near 0."""
        out = []
        for _ in range(self.LEVELS):
            bands = self.haar(c)
            out.append(torch.log(torch.pow(bands[:, 1:], 2).mean((2, 3)) + 1e-9))
            c = bands[:, :1]
        return (torch.cat(out, 1) + 12.0) / 4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The crop branch comes first so that its fixed filters and first convolution are the graph's
        # leading convolutions, which the int8 export keeps in fp32 (sub-LSB noise survives them).
        feats = []
        if self.crops:
            n, _, s, _ = x.shape
            c = x[:, 1:1 + self.crops].reshape(n * self.crops, 1, s, s)
            feats.append(self.band_energies(c).reshape(n, self.crops, -1).mean(1))
            f = self.fine(torch.cat([self.highpass(c), c - 0.5], 1))
            # log of pooled energy: ratios between filter responses, not the scene's contrast
            feats.append(torch.log(f.mean((2, 3)) + 1e-3).reshape(n, self.crops, -1).mean(1))
        stats = x[:, -1, 0, : self.n_stats] if self.n_stats else None
        t = self.thumb(x[:, :1] - 0.5)
        pooled = torch.cat([t.mean((2, 3)), t.amax((2, 3)), *feats, *([stats] if self.n_stats else [])], 1)
        score = torch.cat([head(pooled) for head in self.heads], 1)
        return score + self.stats_linear(stats) if self.n_stats else score


class VectorRankScorer(nn.Module):
    """N x 1 x S x S (a vector in the plane's first cells, ``input.source: embedding``) → N x outputs.

    The vector (pooled patch embeddings of the anomaly model) is standardized with the training
    inputs' mean and spread, fixed in the model, then a small MLP with dropout: a few hundred
    rated images are too few for more (on the train half's own split a linear scorer and 16 or 32
    hidden units ranked within 0.05 Kendall τ of each other).
    """

    def __init__(self, inp: RankerInput, width: int = 16, outputs: int = 1, pool: np.ndarray | None = None) -> None:
        super().__init__()
        n = inp.size * inp.size
        flat = np.zeros((1, n), np.float32) if pool is None else pool[:, 0].reshape(len(pool), n).astype(np.float32)
        sd = flat.std(0)
        self.register_buffer("mu", torch.from_numpy(flat.mean(0)))
        self.register_buffer("inv_sd", torch.from_numpy(np.where(sd > 1e-6, 1.0 / np.maximum(sd, 1e-6), 0.0).astype(np.float32)))
        self.mlp = nn.Sequential(nn.Dropout(0.2), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].reshape(x.shape[0], -1)
        return self.mlp((v - self.mu) * self.inv_sd)


def make_scorer(inp: RankerInput, width: int, outputs: int = 1, pool: np.ndarray | None = None) -> nn.Module:
    """The ranker model for ``inp``: the CNN for frames and maps, the MLP for embedding vectors."""
    if inp.source == "embedding":
        return VectorRankScorer(inp, width, outputs, pool)
    return RankScorer(inp, width, outputs)
