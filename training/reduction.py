"""A compact patch embedding: a linear reduction fitted on good patches, inside the model.

The reference search costs patches x bank rows x dimensions per frame, and at 304 dimensions it
rivals the CNN itself. A reduction fitted on ``train/good`` (PCA, optionally whitened) is appended
to the embedder as a 1x1 convolution, so the exported ONNX graph outputs the reduced embedding:
int8 quantization and the parity gate cover it, and the coreset, bank, threshold and heat floor
are all built in the reduced space. The station then scores exactly what training scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from device.errors import KenpinError

FIT_ROWS = 200_000  # patches the reduction is fitted on (a seeded sample): the covariance settles well before


@dataclass(frozen=True)
class Reduction:
    """z = scale * components (x - mean): ``components`` is dim x C with orthonormal rows."""

    mean: np.ndarray  # C
    components: np.ndarray  # dim x C
    scale: np.ndarray  # dim (1 without whitening)
    explained: float  # share of the good patches' variance the kept directions hold
    residual: bool = False  # one more channel: the patch's distance to the kept subspace

    @property
    def out_dim(self) -> int:
        return len(self.scale) + int(self.residual)

    @property
    def weight(self) -> np.ndarray:
        """The 1x1 convolution's weight (dim x C), scale folded in."""
        return (self.components * self.scale[:, None]).astype(np.float32)

    @property
    def bias(self) -> np.ndarray:
        return (-(self.weight @ self.mean)).astype(np.float32)

    def apply(self, maps: np.ndarray) -> np.ndarray:
        """NxCxhxw feature maps → Nxdimxhxw, what the appended convolution computes."""
        out = np.einsum("dc,nchw->ndhw", self.weight, maps, optimize=True) + self.bias[None, :, None, None]
        if self.residual:  # |x - mean|² - |projection|² (the components are orthonormal; no whitening)
            centred = maps - self.mean[None, :, None, None]
            r2 = np.einsum("nchw,nchw->nhw", centred, centred) - np.einsum("ndhw,ndhw->nhw", out, out)
            out = np.concatenate([out, np.sqrt(np.maximum(r2, 0.0))[:, None]], axis=1)
        return out.astype(np.float32)

    def about(self, method: str) -> dict[str, object]:
        """What the manifest says of it."""
        return {"dim": self.out_dim, "from_dim": int(self.mean.shape[0]), "method": method + " + residual" * self.residual,
                "explained_variance": round(float(self.explained), 4)}


def check_dim(dim: int, embedding_dim: int, n_patches: int, key: str = "reduction.dim") -> None:
    """A reduction must be smaller than the embedding and than the patches it is fitted on."""
    if dim >= embedding_dim:
        raise KenpinError(f"{key} = {dim}: must be below the embedding's {embedding_dim} dimensions "
                          f"(0 keeps the full embedding)")
    if dim > n_patches:
        raise KenpinError(f"{key} = {dim}: larger than the {n_patches} bank patches it would be fitted on; "
                          f"use at most {n_patches} or more good images")


def fit_reduction(patches: np.ndarray, dim: int, whiten: bool, seed: int, residual: bool = False) -> Reduction:
    """PCA of good patch embeddings (PxC) to ``dim`` directions; ``whiten`` scales each to unit variance;
    ``residual`` adds the distance to the kept subspace as one more channel (``dim`` counts it)."""
    if residual and whiten:
        raise KenpinError("reduction.residual and reduction.whiten: the residual channel is in the embedding's "
                          "own units; use one of them")
    check_dim(dim, patches.shape[1], patches.shape[0])
    dim -= int(residual)
    rng = np.random.default_rng(seed + 31337)
    x = patches if len(patches) <= FIT_ROWS else patches[rng.choice(len(patches), FIT_ROWS, replace=False)]
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:dim]
    values, comps = np.maximum(values[order], 1e-12), vectors[:, order].T
    comps *= np.where(comps[np.arange(dim), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed sign
    scale = 1.0 / np.sqrt(values) if whiten else np.ones(dim)
    explained = float(values.sum() / max(np.trace(cov), 1e-12))
    return Reduction(mean.astype(np.float32), comps.astype(np.float32), scale.astype(np.float32), explained, residual)


class ReducedEmbedder(nn.Module):
    """An embedder followed by the reduction's 1x1 convolution: one graph, exported as one."""

    def __init__(self, embedder: nn.Module, reduction: Reduction) -> None:
        super().__init__()
        self.embedder, self.reduction = embedder, reduction
        dim, c = reduction.components.shape
        self.project = nn.Conv2d(c, dim, kernel_size=1, bias=True)
        with torch.no_grad():
            self.project.weight.copy_(torch.from_numpy(reduction.weight).view(dim, c, 1, 1))
            self.project.bias.copy_(torch.from_numpy(reduction.bias))
        for p in self.project.parameters():
            p.requires_grad_(False)
        self.residual = reduction.residual
        self.register_buffer("mean", torch.from_numpy(reduction.mean).view(1, c, 1, 1))

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return self.embedder.grid(height, width)

    def about(self, spec: object) -> dict[str, object]:
        """The manifest's ``reduction`` entry."""
        if getattr(spec, "discriminant", False):
            return self.reduction.about(f"defect-discriminant (ridge {spec.ridge})")
        return self.reduction.about("whitened PCA" if getattr(spec, "whiten", False) else "PCA")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.embedder(x)
        z = self.project(features)
        if not self.residual:
            return z
        centred = features - self.mean
        r2 = (centred * centred).sum(dim=1, keepdim=True) - (z * z).sum(dim=1, keepdim=True)
        return torch.cat([z, torch.sqrt(torch.clamp(r2, min=0.0))], dim=1)


def search_ms(bank: np.ndarray, patches: np.ndarray, repeat: int = 50) -> float:
    """Median milliseconds of one frame's reference search on one thread (the station's per-frame cost)."""
    import time

    from threadpoolctl import threadpool_limits

    from device.scoring import NearestNeighbourScorer

    scorer, times = NearestNeighbourScorer(bank), []
    with threadpool_limits(1):
        for _ in range(repeat):
            t0 = time.perf_counter()
            scorer.distances(patches)
            times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))
