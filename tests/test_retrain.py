"""``kenpin retrain``: the verdicts operators marked wrong retrain the bundle, judged beside the running one."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_recipe
from kenpin.cli import main
from training.metric.pseudo_masks import MAX_PATCHES, guess_masks


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _feedback(tmp: Path, line: Path, n_good: int = 2, n_defect: int = 2) -> Path:
    """A station feedback folder (the layout ``device.station.feedback`` writes) from the line's test parts."""
    fb = tmp / "feedback"
    goods = sorted((line / "test" / "good").iterdir())[:n_good]
    defects = sorted(p for d in sorted((line / "test").iterdir()) if d.name != "good" for p in d.iterdir())[:n_defect]
    for label, paths in (("good", goods), ("defect", defects)):
        (fb / "train" / label).mkdir(parents=True)
        for i, p in enumerate(paths):
            shutil.copy(p, fb / "train" / label / f"{i:08d}.png")
    return fb


def test_marked_verdicts_retrain_the_bundle_and_both_are_judged_side_by_side(tiny_line, tiny_bundle, tmp_path, capsys):
    from kenpin.retrain import retrain
    from device.bundle import read_manifest

    fb = _feedback(tmp_path, tiny_line)
    before_line, before_fb = _tree(tiny_line), _tree(fb)
    r = tiny_recipe()
    recipe = replace(r, metric=replace(r.metric, steps=2, val_every=1, batch_images=2, crop=64, val_images=8,
                                       val_bank_images=8, val_coreset=200))
    out = tmp_path / "new-bundle"
    result = retrain(tiny_bundle, fb, tiny_line, out, tiny_line, recipe)

    body = read_manifest(out)
    n_train_good = len(list((tiny_line / "train" / "good").iterdir()))
    # The two parts marked good joined the good images the bank and threshold are fitted on.
    assert body["calibration"]["n_bank_images"] + body["calibration"]["n_holdout_images"] == n_train_good + 2
    running, new = result["marked"]
    assert running["n_good"] == new["n_good"] == 2 and running["n_defect"] == new["n_defect"] == 2
    ev = json.loads((tmp_path / "new-bundle-eval.json").read_text())
    assert ev["compared_with"]["bundle"] == str(tiny_bundle) and ev["bundle_id"] == body["bundle_id"]
    assert set(result["evaluation"]["running"]) == {"image_auroc", "false_reject_rate", "escape_rate"}
    printed = capsys.readouterr().out
    assert "marked defective, rejected" in printed and "escapes" in printed and f"upload {out}" in printed
    # Neither the dataset nor the station's feedback folder was written.
    assert _tree(tiny_line) == before_line and _tree(fb) == before_fb


@pytest.mark.parametrize("layout, says", [
    ("missing", "no such folder"),
    ("no-train", "no train/ folder"),
    ("odd-label", "train/scratch/ is not a feedback label"),
    ("empty", "no marked images"),
])
def test_a_feedback_folder_that_is_not_the_stations_is_refused_in_one_sentence(
        layout, says, tiny_line, tiny_bundle, tmp_path, capsys):
    fb = tmp_path / "fb"
    if layout != "missing":
        fb.mkdir()
    if layout in ("odd-label", "empty"):
        (fb / "train" / "good").mkdir(parents=True)
    if layout == "odd-label":
        (fb / "train" / "scratch").mkdir()
    out = tmp_path / "new"
    rc = main(["retrain", "--bundle", str(tiny_bundle), "--feedback", str(fb), "--data", str(tiny_line),
               "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says in err and str(fb) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_retrain_never_writes_over_an_existing_folder(tiny_line, tiny_bundle, tmp_path, capsys):
    fb = _feedback(tmp_path, tiny_line)
    before = _tree(tiny_bundle)
    rc = main(["retrain", "--bundle", str(tiny_bundle), "--feedback", str(fb), "--data", str(tiny_line),
               "--out", str(tiny_bundle)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert _tree(tiny_bundle) == before


def test_a_marked_defect_without_a_mask_trains_on_where_it_differs_from_good_parts():
    rng = np.random.default_rng(0)
    grid = 8

    def embed(x: np.ndarray) -> np.ndarray:  # a stand-in embedder: each 8x8 patch's mean per channel
        n, c, h, w = x.shape
        return x.reshape(n, c, grid, h // grid, grid, w // grid).mean(axis=(3, 5))

    good = rng.normal(0, 0.05, (6, 3, 64, 64)).astype(np.float32)
    defect = rng.normal(0, 0.05, (1, 3, 64, 64)).astype(np.float32)
    defect[0, :, 24:32, 40:48] += 2.0  # one patch unlike any good one
    defect[0, :, 32:40, 40:48] += 1.9  # and its neighbour, nearly as unlike
    mask = guess_masks(embed, good, defect, (64, 64))[0]
    assert mask.shape == (64, 64)
    assert mask[24:40, 40:48].all()  # the peak and its near-peak neighbour
    assert (mask > 0).sum() == 2 * 64  # nothing else
    assert (mask > 0).sum() <= MAX_PATCHES * 64


@pytest.mark.slow
def test_marking_the_demo_lines_wrong_verdicts_and_retraining_lowers_its_escapes(tmp_path):
    """The whole loop: station on a shift → marks → kenpin retrain → both bundles on a later shift."""
    from kenpin.feedback_demo import run_feedback_loop

    result = run_feedback_loop(tmp_path)
    assert result["marks"]["defect"] > 0  # the running bundle let some defects through, and they were marked
    new, running = result["evaluation"], result["evaluation"]["running"]
    assert new["escape_rate"] < running["escape_rate"]  # on the later shift, which neither bundle saw
    before, after = result["marked"]
    assert after["defects_rejected"] > before["defects_rejected"]
