"""Metric learning of the embedder, as a quality engineer runs it: on the CPU, repeatable,
resumable, selected on validation, and exported through the same bundle path as the frozen model."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from device.errors import KenpinError
from device.images import list_images, read_rgb
from device.runtime import Inspector
from device.scoring import NearestNeighbourScorer
from tests.conftest import tiny_recipe
from training.features import PatchEmbedder
from training.fit import image_scores, torch_embed_fn
from training.metric.batches import make_metric_batch
from training.metric.losses import _pair_masks
from training.metric.model import HeadSpec, TrainedEmbedder, load_embedder
from training.metric.pair_sampling import NuisanceSpec
from training.recipe import MetricSpec


def metric_recipe(steps: int = 12, **head):
    """The tiny test recipe with a short metric-learning run (a few seconds on 2 cores)."""
    r = tiny_recipe()
    spec = MetricSpec(steps=steps, batch_images=4, crop=96, val_every=6, val_bank_images=8, val_images=6,
                      val_coreset=150, head=HeadSpec(**head) if head else HeadSpec())
    return replace(r, metric=spec)


def _good(n: int = 3, size: int = 128) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(60, 200, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_batch_pairs_the_two_views_of_each_place_and_flags_only_defect_patches():
    r = metric_recipe()
    b = make_metric_batch(_good(), [], np.random.default_rng(1), 4, r.preprocess, 96, 16, 0.5, 1.0,
                          NuisanceSpec(), image_level=False)
    assert b.inputs.shape == (8, 3, 96, 96) and b.n_defect_views == 2
    half = len(b.labels) // 2
    first, second = b.labels[:half], b.labels[half:]
    assert not b.negatives[:half].any() and b.negatives[half:].any()
    clean = (second >= 0) & ~b.negatives[half:]
    assert np.array_equal(first[clean], second[clean])  # same place, both views: the positive pair
    assert not np.isin(second[b.negatives[half:]], first).any()  # a defect patch is nobody's positive
    assert len(np.unique(first)) == half  # every place of a first view is its own id


def test_area_fraction_paints_area_wide_defects_that_flag_many_patches():
    r = metric_recipe()

    def defect_patches(area_fraction: float) -> float:
        b = make_metric_batch(_good(), [], np.random.default_rng(2), 8, r.preprocess, 0, 16, 0.5, 1.0,
                              NuisanceSpec(), False, area_fraction)
        return b.negatives.sum() / b.n_defect_views  # defect patches per painted view (grid of 64)

    local, area = defect_patches(0.0), defect_patches(1.0)
    assert local < 6 and area > 10  # spots and scratches cover a few patches; area-wide ones 10-50 %
    with pytest.raises(KenpinError, match="area_fraction = "):
        MetricSpec(area_fraction=1.5)


def test_validation_defects_mix_local_and_area_wide_like_kenpin_tune():
    from training.metric.validation import make_valset

    r = replace(metric_recipe(), preprocess=replace(tiny_recipe().preprocess, width=128, height=128))
    good = _good(12)
    val = make_valset(good[:10], good[10:] * 4, r)
    changed = np.abs(val.defects - val.good).max(axis=1) > 1e-6  # pixels each painted defect touched
    share = changed.reshape(len(changed), -1).mean(axis=1)
    assert share.min() < 0.08 and share.max() > 0.10  # local defects and area-wide ones
    assert len(val.fusion) == 2 and not any(np.array_equal(f, b) for f in val.fusion for b in val.bank)


def test_with_defect_flags_two_good_patches_are_never_a_negative_pair():
    labels = torch.tensor([0, 1, 2, 3])
    negatives = torch.tensor([False, False, False, True])
    _, neg = _pair_masks(labels, negatives)
    assert not neg[:3, :3].any()  # good places are not pushed apart
    assert neg[:3, 3].all() and neg[3, :3].all()


def test_before_training_the_trained_embedder_is_the_frozen_one():
    x = torch.randn(2, 3, 128, 128)
    model = TrainedEmbedder(tiny_recipe().features, HeadSpec(finetune_from_block=12)).eval()
    model.scale.fill_(7.0)
    with torch.inference_mode():
        assert torch.allclose(model(x) * 7.0, PatchEmbedder(tiny_recipe().features).eval()(x), atol=1e-5)
        assert model(x).shape == (2, 304, 8, 8)
    pooled = TrainedEmbedder(tiny_recipe().features, HeadSpec(level="image")).eval()
    assert pooled(x).shape == (2, 304, 1, 1) and pooled.grid(128, 128) == (1, 1)


@pytest.fixture(scope="module")
def trained_run(tiny_line, tmp_path_factory):
    from training.metric.train import train_embedding

    out = tmp_path_factory.mktemp("metric") / "run"
    t0 = time.perf_counter()
    summary = train_embedding(tiny_line, out, metric_recipe())
    return out, summary, time.perf_counter() - t0


def test_a_cpu_run_on_a_tiny_line_finishes_in_under_a_minute_with_its_records(trained_run):
    out, summary, seconds = trained_run
    assert seconds < 60
    assert summary["device"] == "cpu" and summary["steps"] == 12
    for name in ("embedder.pt", "checkpoint_last.pt", "history.json", "curve.png", "summary.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    vals = [h for h in history if "val_auroc" in h]
    assert [h["step"] for h in vals] == [0, 6, 12]
    assert all(np.isfinite(h["loss"]) for h in history if "loss" in h)
    # The selection is the best validation (step 0, the frozen model, included).
    assert summary["best_val_auroc"] == max(h["val_auroc"] for h in vals)
    assert summary["frozen_val_auroc"] == vals[0]["val_auroc"]


def test_the_same_seed_trains_the_same_weights(trained_run, tiny_line, tmp_path):
    from training.metric.train import train_embedding

    out, _, _ = trained_run
    train_embedding(tiny_line, tmp_path / "again", metric_recipe())
    a = torch.load(out / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "again" / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_run_resumes_to_the_same_result(trained_run, tiny_line, tmp_path, monkeypatch):
    import training.metric.train as mt

    out, _, _ = trained_run
    real, calls = mt.make_metric_batch, {"n": 0}

    def dies_at_step_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # first call is the scale probe
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mt, "make_metric_batch", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        mt.train_embedding(tiny_line, tmp_path / "r", metric_recipe())
    monkeypatch.setattr(mt, "make_metric_batch", real)
    assert torch.load(tmp_path / "r" / "checkpoint_last.pt", weights_only=False)["state"]["step"] == 6
    mt.train_embedding(tiny_line, tmp_path / "r", metric_recipe(), resume=True)
    a = torch.load(out / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "r" / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [h["step"] for h in json.loads((tmp_path / "r" / "history.json").read_text()) if "val_auroc" in h]
    assert steps == [0, 6, 12]  # step 6 is not validated twice


def test_the_trained_embedder_goes_through_the_same_bundle_path(trained_run, tiny_line, tmp_path):
    from export.build import build_bundle

    out, _, _ = trained_run
    recipe = metric_recipe()
    body = build_bundle(tiny_line, tmp_path / "b", recipe, out / "embedder.pt")
    assert "metric-learned" in body["backbone"]
    model, _ = load_embedder(out / "embedder.pt", recipe.features, recipe.metric.head)
    assert_the_station_scores_as_training(tmp_path / "b", model, tiny_line)


def assert_the_station_scores_as_training(bundle, model, line) -> None:
    """The station's fp32 score of a few test images is the training side's, and int8 judges them."""
    station = Inspector.open(bundle, "fp32")
    scorer = NearestNeighbourScorer(np.load(bundle / "bank_fp32.npy"))
    for p in list_images(line / "test" / "good")[:2] + list_images(line / "test" / "crack")[:2]:
        rgb = read_rgb(p)
        train_side = image_scores(scorer, torch_embed_fn(model)(station.preprocess(rgb)))[0]
        assert abs(station.inspect(rgb).raw_score - train_side) <= 1e-4 * abs(train_side)
    assert Inspector.open(bundle, "int8").inspect(rgb).verdict in ("ok", "defect")


def test_an_embedder_trained_at_another_input_size_is_refused_by_name(trained_run, tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    out, _, _ = trained_run
    (tmp_path / "r.yaml").write_text("preprocess: {width: 160, height: 160}\n")
    code = main(["train", "--data", str(tiny_line), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "r.yaml"),
                 "--embedder", str(out / "embedder.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "preprocess" in err and "embedder.pt" in err and not (tmp_path / "b").exists()


def test_a_file_that_is_not_an_embedder_is_refused_by_name(tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    bad = tmp_path / "embedder.pt"
    bad.write_bytes(b"not a checkpoint")
    code = main(["train", "--data", str(tiny_line), "--out", str(tmp_path / "b"), "--embedder", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err


def test_resume_without_a_run_says_so(tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    code = main(["train-embedding", "--data", str(tiny_line), "--out", str(tmp_path / "none"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


TINY_YAML = """\
preprocess: {width: 128, height: 128}
bank: {coreset_size: 300}
export: {quant_images: 8, quant_methods: [MinMax]}
batch_size: 8
metric: {steps: 6, batch_images: 4, crop: 96, val_every: 3, val_bank_images: 8, val_images: 6, val_coreset: 150}
"""


def test_compare_scores_frozen_and_trained_bundles_on_the_same_images(tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    code = main(["compare", "--data", str(tiny_line), "--recipe", str(tmp_path / "tiny.yaml"),
                 "--workdir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 0
    m = json.loads((tmp_path / "w" / "compare.json").read_text())
    assert m["n_defective"] == m["compared_with"]["n_defective"] > 0
    assert 0 <= m["image_auroc"] <= 1 and 0 <= m["compared_with"]["image_auroc"] <= 1
    assert (tmp_path / "w" / "report" / "embeddings_before_after.png").stat().st_size > 10_000
    assert "image AUROC" in out and "frozen" in out and m["training"]["steps"] == 6


def test_torchrun_trains_with_two_processes_and_one_report(tiny_line, tmp_path):
    """DistributedDataParallel as torchrun launches it (gloo on the CPU; nccl on GPUs)."""
    import os
    import subprocess
    import sys

    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "kenpin.cli",
                          "train-embedding", "--data", str(tiny_line), "--out", str(tmp_path / "ddp"),
                          "--recipe", str(tmp_path / "tiny.yaml")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6
    assert run.stdout.count("next: kenpin train") == 1  # rank 0 alone reports


def test_real_defects_are_split_per_type_between_training_and_validation():
    from training.metric.pair_sampling import LabeledDefect
    from training.metric.validation import split_real

    found = [LabeledDefect(Path(f"{kind}/{i}.png"), kind, np.zeros((4, 4, 3), np.uint8), None)
             for kind, n in (("crack", 10), ("spot", 5), ("chip", 1)) for i in range(n)]
    trained, held = split_real(found, 0.5, seed=0)
    count = lambda ds, kind: sum(d.defect == kind for d in ds)  # noqa: E731
    assert [count(held, k) for k in ("crack", "spot", "chip")] == [5, 2, 0]  # a lone image only trains
    assert {d.path for d in trained} | {d.path for d in held} == {d.path for d in found}
    assert not {d.path for d in trained} & {d.path for d in held}
    assert [d.path for d in split_real(found, 0.5, seed=0)[1]] == [d.path for d in held]  # seeded
    assert split_real(found, 0.0, seed=0) == (found, [])
    with pytest.raises(KenpinError, match="val_real_fraction = 1"):
        MetricSpec(val_real_fraction=1.0)


def _with_train_defects(line: Path, out: Path, kinds: tuple[str, ...]) -> Path:
    """A copy of ``line`` with every test image of ``kinds`` moved to train/<kind>/ (masks stay where they are)."""
    shutil.copytree(line, out)
    for kind in kinds:
        shutil.move(out / "test" / kind, out / "train" / kind)
    return out


def test_held_out_real_defects_judge_each_step_beside_the_painted_ones(tiny_line, tmp_path, caplog):
    from training.metric.train import train_embedding

    data = _with_train_defects(tiny_line, tmp_path / "line", ("crack", "spot"))  # two images each
    r = metric_recipe(steps=6)
    caplog.set_level(logging.INFO, "training.metric.train")
    summary = train_embedding(data, tmp_path / "run", replace(r, metric=replace(r.metric, val_real_fraction=0.5)))
    vals = [h for h in json.loads((tmp_path / "run" / "history.json").read_text()) if "val_auroc" in h]
    assert [h["step"] for h in vals] == [0, 6]
    for h in vals:  # the step kept is chosen on both: painted defects alone rewarded what real ones did not follow
        assert 0 <= h["val_real_auroc"] <= 1 and h["val_auroc"] == pytest.approx((h["val_synthetic_auroc"] + h["val_real_auroc"]) / 2)
    assert summary["best_val_auroc"] == max(h["val_auroc"] for h in vals)
    assert "2 few-shot images (2 real defects held out to validate)" in caplog.text  # one of each type trains
