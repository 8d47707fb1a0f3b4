"""RankNet's loss and its optimization loop: pairs of pool rows in, a trained scorer out.

The loss is the cross-entropy between P(a above b) = sigmoid(s_a - s_b) and the pair's target;
each pair is judged by one output column, so one model serves several capture-quality families.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from device.ranker_input import RankerInput
from training.rank.model import make_scorer
from training.rank.pairs import PairBatch
from training.rank.recipe import TrainSpec


def ranknet_loss(s_a: torch.Tensor, s_b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between P(a above b) = sigmoid(s_a - s_b) and the target (1, 0, or ½ for ties)."""
    return F.binary_cross_entropy_with_logits((s_a - s_b).reshape(-1), target.reshape(-1))


@dataclass
class TrainResult:
    """The trained scorer and how its loss went."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_ranknet(pool: np.ndarray, pairs: Callable[[np.random.Generator, int], PairBatch], inp: RankerInput,
                  spec: TrainSpec, desc: str = "ranknet", outputs: int = 1) -> TrainResult:
    """Train on pairs of rows of ``pool`` (N x C x S x S, float16 or float32) drawn by ``pairs``;
    each pair is judged by the output column the sampler names (``outputs`` columns in all)."""
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    device = pick_device()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Convolutions this small do not parallelize; extra OpenMP threads only spin-wait, and on a
        # busy CPU that made a step 3-18x slower (measured: 0.08 s vs 1.5 s per step).
        torch.set_num_threads(1)
    try:
        return _train(pool, pairs, inp, spec, desc, rng, device, outputs)
    finally:
        torch.set_num_threads(threads)


def _train(pool: np.ndarray, pairs: Callable[[np.random.Generator, int], PairBatch], inp: RankerInput,
           spec: TrainSpec, desc: str, rng: np.random.Generator, device: torch.device, outputs: int) -> TrainResult:
    model = make_scorer(inp, spec.width, outputs, pool).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.steps, pct_start=0.1)
    data = torch.from_numpy(pool)
    result, t0, run = TrainResult(model, device=str(device)), time.perf_counter(), 0.0
    bar = tqdm(range(1, spec.steps + 1), desc=desc, unit="step", leave=False)
    model.train()
    for step in bar:
        ia, ib, target, column = pairs(rng, spec.batch_pairs)
        x = data[np.concatenate([ia, ib])].to(device, torch.float32)
        s = model(x).gather(1, torch.as_tensor(np.concatenate([column, column]), device=device).view(-1, 1))
        loss = ranknet_loss(s[: len(ia)], s[len(ia):], torch.as_tensor(target, dtype=torch.float32, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = loss.item() if step == 1 else 0.98 * run + 0.02 * loss.item()
        if step % 50 == 0 or step == spec.steps:
            bar.set_postfix(loss=f"{run:.4f}")
            result.history.append({"step": step, "loss": run})
    model.eval().cpu()
    result.seconds = time.perf_counter() - t0
    return result


@torch.no_grad()
def score_pool(model: nn.Module, pool: np.ndarray, batch: int = 256) -> np.ndarray:
    """Scores (N x outputs) of every row of ``pool`` with the PyTorch model (for validation and parity)."""
    model.eval()
    out = [model(torch.from_numpy(pool[i:i + batch]).float()).numpy() for i in range(0, len(pool), batch)]
    return np.concatenate(out)

