"""``kenpin train-embedding``: metric learning of the patch embedder, selected on validation.

One process per GPU under ``torchrun`` (PyTorch's DistributedDataParallel; rank 0 validates and
writes), CUDA with bfloat16 autocast when present, the CPU otherwise. Everything random follows
the recipe's seed, so a run — and a resumed run — is repeatable on the same machine.

Model selection never looks at ``test/``: validation is the hold-out of train/good (never trained
on) against synthetic defects painted on it, scored exactly as the station scores (coreset bank,
nearest-neighbour distance, max over patches). With ``metric.val_real_fraction`` a share of the
line's own defects in ``train/<defect>/`` is held out of training too, and the validation AUROC is
the mean of the synthetic and the real one: painted defects alone have rewarded directions the
real ones do not follow. Step 0 is the frozen embedder, so the selected checkpoint is the frozen
baseline unless training beat it on validation.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from device.errors import KenpinError
from training.fit import flatten_patches, read_good_split
from training.metric.batches import Batch, FewShot, make_metric_batch, normalize, resize_all
from training.metric.losses import (
    contrastive_loss,
    feature_drift_penalty,
    mine_all,
    mine_hard,
    mine_nearest_good,
    mine_semi_hard,
    triplet_margin_loss,
)
from training.metric.model import TrainedEmbedder, TrainingView, init_projection, save_embedder
from training.metric.pair_sampling import LabeledDefect, labeled_defects
from training.metric.pseudo_masks import guess_masks
from training.metric.validation import ValSet, embed_batches, make_valset, split_real, validate
from training.recipe import MetricSpec, Recipe

log = logging.getLogger(__name__)
MINERS = {"semi_hard": mine_semi_hard, "hard": mine_hard, "all": mine_all}


@dataclass
class Dist:
    """This process's place in a torchrun launch (world 1 without one) and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the torchrun process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, device)


def _rows(emb: torch.Tensor) -> torch.Tensor:
    """NxCxhxw → (N*h*w)xC in the label order of ``make_metric_batch``."""
    return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])


def _subsample(batch: Batch, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Rows entering the loss: every defect row (up to half the limit), then whole positive pairs."""
    labels, neg = batch.labels, batch.negatives
    defect = np.flatnonzero(neg)
    defect = rng.permutation(defect)[: limit // 2]
    good = np.flatnonzero(~neg & (labels >= 0))
    places, counts = np.unique(labels[good], return_counts=True)
    paired = rng.permutation(places[counts == 2])[: (limit - len(defect)) // 2]
    keep = good[np.isin(labels[good], paired)]
    return np.sort(np.r_[defect, keep])


def loss_on(emb: torch.Tensor, ref: torch.Tensor, batch: Batch, spec: MetricSpec,
            rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Metric loss on the batch's patch (or image) rows, plus the drift penalty on good rows."""
    if spec.head.level == "image":
        emb, ref = emb.mean((2, 3), keepdim=True), ref.mean((2, 3), keepdim=True)
    rows, ref_rows = _rows(emb.float()), _rows(ref.float())
    idx = torch.from_numpy(_subsample(batch, spec.max_rows, rng)).to(emb.device)
    labels = torch.from_numpy(batch.labels).to(emb.device)[idx]
    negatives = torch.from_numpy(batch.negatives).to(emb.device)[idx]
    x = rows[idx]
    if spec.positives == "nearest":
        images = torch.from_numpy(batch.images).to(emb.device)[idx]
        metric = triplet_margin_loss(x, images, spec.margin, mine_nearest_good, negatives=negatives)
    elif spec.loss == "triplet":
        metric = triplet_margin_loss(x, labels, spec.margin, MINERS[spec.miner], negatives=negatives)
    else:
        metric = contrastive_loss(x, labels, 0.0, spec.neg_margin, negatives=negatives)
    good = ~negatives
    drift = feature_drift_penalty(x[good], ref_rows[idx][good]) if bool(good.any()) else x.sum() * 0
    total = metric.loss + spec.drift_weight * drift
    return total, {"loss": total.item(), "metric": metric.loss.item(), "active": metric.active, "drift": drift.item()}


@torch.no_grad()
def nuisance_scale(model: TrainedEmbedder, batch: Batch, device: torch.device) -> float:
    """Mean distance between the two views of one good place, under the untrained embedder (frozen
    features, through the starting projection when there is one)."""
    rows = _rows(model.projected(model.features(torch.from_numpy(batch.inputs).to(device))).float())
    labels = batch.labels
    half = len(labels) // 2
    same = (labels[:half] == labels[half:]) & (labels[:half] >= 0) & ~batch.negatives[half:]
    d = (rows[:half][torch.from_numpy(same)] - rows[half:][torch.from_numpy(same)]).norm(dim=1)
    return float(d.mean())


def _optimizer(model: TrainedEmbedder, spec: MetricSpec) -> torch.optim.Optimizer:
    head = model.trained_parameters()
    backbone = [p for p in model.frozen.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": spec.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": spec.lr * spec.backbone_lr_factor})
    return torch.optim.AdamW(groups, weight_decay=spec.weight_decay)


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to zero."""
    warm = max(1, total // 20)
    return step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@dataclass
class RunState:
    """Everything a resumed run needs to continue exactly where it stopped."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_auroc: float = -1.0
    best_step: int = -1
    frozen_auroc: float | None = None
    validated_step: int = -1


def _save_last(out: Path, view: TrainingView, opt: torch.optim.Optimizer, state: RunState,
               rng: np.random.Generator) -> None:
    tmp = out / "checkpoint_last.pt.tmp"
    torch.save({"model": view.model.state_dict(), "optimizer": opt.state_dict(), "state": state.__dict__,
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(out / "checkpoint_last.pt")  # a crash mid-write leaves the previous checkpoint whole


def _resume(out: Path, view: TrainingView, opt: torch.optim.Optimizer, rng: np.random.Generator) -> RunState:
    path = out / "checkpoint_last.pt"
    if not path.is_file():
        raise KenpinError(f"{path}: nothing to resume (no checkpoint_last.pt in {out})")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state inside
    view.model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    rng.bit_generator.state = ckpt["numpy_rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    return RunState(**ckpt["state"])


@torch.no_grad()
def _good_patches(model: TrainedEmbedder, train: list[np.ndarray], recipe: Recipe, device: torch.device) -> np.ndarray:
    """Frozen features (PxC) of the validation bank's worth of training images, a seeded pick: what
    the starting projection's PCA is fitted on."""
    model.eval()
    picks = np.random.default_rng(recipe.seed + 7).permutation(len(train))[:recipe.metric.val_bank_images]
    x = normalize([train[i] for i in np.sort(picks)], recipe.preprocess)
    return flatten_patches(embed_batches(model.features, x, device, recipe.batch_size))


def _few_shot(found: list[LabeledDefect], recipe: Recipe, model: TrainedEmbedder, train: list[np.ndarray],
              device: torch.device) -> list[FewShot]:
    """The real defects trained on, at input size with their masks; a defect without a mask (an
    operator's marked reject) gets the frozen model's multiple-instance guess (``pseudo_masks``)."""
    if not recipe.metric.few_shot:
        return []
    pre = recipe.preprocess
    # Nearest-neighbour for masks: an area resize would blur them into a halo of "defect" pixels.
    drawn = [FewShot(resize_all([d.image], pre)[0],
                     cv2.resize(d.mask, (pre.width, pre.height), interpolation=cv2.INTER_NEAREST))
             for d in found if d.mask is not None]
    unmasked = resize_all([d.image for d in found if d.mask is None], pre)
    if not unmasked:
        return drawn
    model.eval()
    picks = np.random.default_rng(recipe.seed).permutation(len(train))[:recipe.metric.val_bank_images]
    masks = guess_masks(lambda x: embed_batches(model, x, device, recipe.batch_size),
                        normalize([train[i] for i in np.sort(picks)], pre), normalize(unmasked, pre),
                        (pre.height, pre.width), recipe.seed)
    log.info("%d defect image(s) without a mask: each trains on its peak patches (multiple-instance guess)",
             len(unmasked))
    return drawn + [FewShot(im, m) for im, m in zip(unmasked, masks)]


def _record(out: Path, state: RunState, row: dict[str, Any]) -> None:
    from training.report import plot_training_curve

    state.history.append(row)
    (out / "history.json").write_text(json.dumps(state.history, indent=1) + "\n")
    plot_training_curve(state.history, out / "curve.png")


def train_embedding(data_dir: Path, out: Path, recipe: Recipe, resume: bool = False) -> dict[str, Any]:
    """Train, validate every ``val_every`` steps, keep the best as ``out/embedder.pt``; returns a summary."""
    ctx = setup_distributed()
    spec, pre = recipe.metric, recipe.preprocess
    torch.manual_seed(recipe.seed + ctx.rank)
    rng = np.random.default_rng(recipe.seed + ctx.rank)
    split = read_good_split(data_dir, recipe.train_images, recipe.calibration.holdout_fraction, recipe.seed)
    train, holdout = resize_all(split.bank, pre), resize_all(split.holdout, pre)
    found = labeled_defects(data_dir) if spec.few_shot or spec.val_real_fraction > 0 else []
    trained_on, held = split_real(found, spec.val_real_fraction, recipe.seed)
    val = make_valset(train, holdout, recipe, resize_all([d.image for d in held], pre)) if ctx.main else None
    model = TrainedEmbedder(recipe.features, spec.head).to(ctx.device)
    if model.project is not None:  # every rank fits the same PCA (same images, same seed)
        init_projection(model, _good_patches(model, train, recipe, ctx.device), recipe.seed)
    few = _few_shot(trained_on, recipe, model, train, ctx.device)
    view = TrainingView(model).to(ctx.device)
    opt = _optimizer(model, spec)
    out.mkdir(parents=True, exist_ok=True)
    state = _resume(out, view, opt, rng) if resume else RunState()
    if not resume:
        probe = make_metric_batch(train, [], np.random.default_rng(recipe.seed), spec.batch_images, pre, spec.crop,
                                  model.stride, spec.defect_fraction, spec.defect_scale, spec.nuisance, False)
        model.scale.fill_(nuisance_scale(model, probe, ctx.device))
        if ctx.world > 1:  # every rank uses rank 0's scale
            dist.broadcast(model.scale, 0)
    step_view = view if ctx.world == 1 else torch.nn.parallel.DistributedDataParallel(
        view, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    amp = spec.amp and ctx.device.type == "cuda"
    t0 = time.perf_counter()
    log.info("metric learning: %d train, %d held-out, %d few-shot images (%d real defects held out to validate); "
             "%s on %s x%d; scale %.4f", len(train), len(holdout), len(few), len(held), spec.loss, ctx.device,
             ctx.world, float(model.scale))
    bar = tqdm(total=spec.steps, initial=state.step, desc="train-embedding", unit="step", disable=not ctx.main)
    while state.step <= spec.steps:
        due = state.step % spec.val_every == 0 or state.step == spec.steps
        if due and state.validated_step != state.step:  # a resumed run has validated this step already
            _checkpoint(out, ctx, model, view, opt, state, rng, val, recipe, time.perf_counter() - t0)
        if state.step == spec.steps:
            break
        for g, base in zip(opt.param_groups, (spec.lr, spec.lr * spec.backbone_lr_factor)):
            g["lr"] = base * _lr_factor(state.step, spec.steps)
        batch = make_metric_batch(train, few, rng, spec.batch_images, pre, spec.crop, model.stride,
                                  spec.defect_fraction, spec.defect_scale, spec.nuisance, spec.head.level == "image",
                                  spec.area_fraction)
        step_view.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            emb, ref = step_view(torch.from_numpy(batch.inputs).to(ctx.device))
        loss, logs = loss_on(emb, ref, batch, spec, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.3f}", active=logs["active"])
        state.history.append({"step": state.step, **logs})
    bar.close()
    if ctx.world > 1:
        dist.destroy_process_group()
    return _summary(out, state, time.perf_counter() - t0, ctx, recipe)


def _checkpoint(out: Path, ctx: Dist, model: TrainedEmbedder, view: TrainingView, opt: torch.optim.Optimizer,
                state: RunState, rng: np.random.Generator, val: ValSet | None, recipe: Recipe,
                elapsed: float) -> None:
    """Validate, keep the best, save the resumable state (rank 0); other ranks wait."""
    if ctx.main:
        v = validate(model, val, recipe, ctx.device)
        state.validated_step = state.step
        if state.step == 0:
            state.frozen_auroc = v["val_auroc"]
        better = v["val_auroc"] > state.best_auroc and not v["collapsed"]
        if better:
            state.best_auroc, state.best_step = v["val_auroc"], state.step
            save_embedder(out / "embedder.pt", model, recipe.to_dict(),
                          {"step": state.step, "val_auroc": v["val_auroc"], "frozen_val_auroc": state.frozen_auroc})
        _record(out, state, {"step": state.step, "seconds": round(elapsed, 1), **v})
        real = "" if v["val_real_auroc"] is None else f" = mean of synthetic {v['val_synthetic_auroc']:.4f}, real {v['val_real_auroc']:.4f}"
        log.info("step %d: validation AUROC %.4f%s (%s %.4f), effective rank %.1f%s", state.step, v["val_auroc"], real,
                 start_name(recipe), state.frozen_auroc, v["val_effective_rank"], " — kept" if better else "")
        _save_last(out, view, opt, state, rng)
    if ctx.world > 1:
        dist.barrier()


def start_name(recipe: Recipe) -> str:
    """What step 0 is: the frozen embedder, or with a projecting head the frozen one's PCA."""
    n = recipe.metric.head.out_dim
    return f"frozen + PCA to {n} dims" if n else "frozen"


def _summary(out: Path, state: RunState, seconds: float, ctx: Dist, recipe: Recipe) -> dict[str, Any]:
    s = {"best_step": state.best_step, "best_val_auroc": state.best_auroc, "frozen_val_auroc": state.frozen_auroc,
         "start": start_name(recipe),
         "steps": state.step, "seconds": round(seconds, 1), "device": str(ctx.device), "processes": ctx.world,
         "gpu": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None,
         "embedder": str(out / "embedder.pt"), "rank": ctx.rank}
    if ctx.main:
        (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return s
