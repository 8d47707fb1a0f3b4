"""The figures a plant lives with: escapes at 1 % false rejects (threshold from held-out good, never
test/) and pixel AUPRO, reported by `kenpin eval` beside AUROC."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device.bundle import ProbeScores, Variant, load_bundle
from device.scoring import Normalization
from device.selfcheck import recalibrate, recalibrated
from kenpin.cli import main
from training.aupro import aupro


def _brute_aupro(maps, masks, max_fpr=0.3, steps=4000):
    """The definition, threshold by threshold: mean per-region overlap vs FPR on defect-free pixels."""
    import cv2

    regions = []
    for m, mask in zip(maps, masks):
        n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [m[lab == k] for k in range(1, n)]
    neg = np.concatenate([m[mask == 0] for m, mask in zip(maps, masks)])
    allv = np.concatenate([m.ravel() for m in maps])
    pts = []
    for t in np.linspace(allv.max() + 1e-9, allv.min() - 1e-9, steps):
        pts.append((np.mean(neg > t), np.mean([np.mean(r > t) for r in regions])))
    f, p = np.array(pts).T
    keep = f <= max_fpr
    x, y = np.r_[f[keep], max_fpr], np.r_[p[keep], np.interp(max_fpr, f, p)]
    return np.trapezoid(y, x) / max_fpr


def test_aupro_matches_its_definition_and_weighs_small_regions_like_large_ones():
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for i in range(4):
        mask = np.zeros((40, 40), np.uint8)
        mask[5:25, 5:25] = 1  # a large region
        mask[30 + i % 3, 33] = 1  # a one-pixel pit
        masks.append(mask)
        maps.append(rng.normal(size=(40, 40)) + 1.5 * mask)
    maps.append(rng.normal(size=(40, 40)))
    masks.append(np.zeros((40, 40), np.uint8))  # a good image: its pixels are all negatives
    assert aupro(maps, masks) == pytest.approx(_brute_aupro(maps, masks), abs=2e-3)
    perfect = [m.astype(float) for m in masks]
    assert aupro(perfect, masks) == pytest.approx(1.0)
    # a map that finds only the large regions misses half the regions: far from perfect, though
    # each large region is far bigger than its pit
    large_only = [np.where(np.pad(np.ones((20, 20)), ((5, 15), (5, 15))) > 0, 1.0, 0.0) for _ in masks[:4]]
    maps_l, masks_l = large_only + [np.zeros((40, 40))], masks
    assert aupro(maps_l, masks_l) == pytest.approx(_brute_aupro(maps_l, masks_l), abs=2e-3)
    assert aupro(maps_l, masks_l) < 0.6
    assert aupro([np.zeros((4, 4))], [np.zeros((4, 4), np.uint8)]) is None


def test_other_budgets_follow_the_station_recalibration():
    held = np.linspace(1.0, 2.0, 101)
    v = Variant("int8-w8", "int8", Path("m"), Path("b"), Normalization(1.99, 0.3), (4, 4), 8,
                probe_scores=ProbeScores(held[:40], np.array([3.0])), holdout_scores=held)
    assert v.threshold_at(0.01) == pytest.approx(1.99)
    assert v.threshold_at(0.10) == pytest.approx(1.90)
    here = recalibrated(v, recalibrate(v, held[:40] + 0.25, 0.01))  # this CPU scores 0.25 higher
    assert here.normalization.threshold == pytest.approx(2.24)
    assert here.threshold_at(0.01) == pytest.approx(2.24) and here.threshold_at(0.10) == pytest.approx(2.15)
    assert Variant("fp32", "fp32", Path("m"), Path("b"), Normalization(1, 1), (4, 4), 8).threshold_at(0.01) is None


def test_eval_reports_escapes_at_one_percent_false_rejects_from_held_out_good(capsys, tmp_path, tiny_bundle, tiny_line):
    js = tmp_path / "m.json"
    assert main(["eval", "--bundle", str(tiny_bundle), "--data", str(tiny_line), "--precision", "fp32",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    m = json.loads(js.read_text())
    op = m["operating_point"]
    held = np.asarray(load_bundle(tiny_bundle).manifest["variants"]["fp32"]["calibration"]["holdout_scores"])
    assert op["raw_threshold"] == pytest.approx(np.quantile(held, 0.99), rel=1e-5)
    assert "held-out good" in op["threshold_from"]
    raw = np.array([i["raw_score"] for i in m["images"]])
    bad = np.array([i["defect"] != "good" for i in m["images"]])
    assert op["escape_rate"] == pytest.approx(np.mean(raw[bad] <= op["raw_threshold"]))
    assert op["false_reject_rate"] == pytest.approx(np.mean(raw[~bad] > op["raw_threshold"]))
    assert 0 < m["pixel_aupro"] <= 1
    assert "at 1% false rejects" in out and "pixel AUPRO" in out


def test_a_bundle_without_held_out_scores_still_evaluates_and_says_why(capsys, tmp_path, tiny_bundle, tiny_line):
    import shutil

    from device.bundle import MANIFEST, manifest_digest

    b = Path(shutil.copytree(tiny_bundle, tmp_path / "old"))
    man = json.loads((b / MANIFEST).read_text())
    for v in man["variants"].values():
        v["calibration"].pop("holdout_scores")
    man["calibration"]["target_false_reject_rate"] = 0.02
    man["manifest_sha256"] = manifest_digest(man)  # a genuine older bundle, not a tampered one
    (b / MANIFEST).write_text(json.dumps(man))
    js = tmp_path / "m.json"
    assert main(["eval", "--bundle", str(b), "--data", str(tiny_line), "--precision", "fp32", "--json", str(js)]) == 0
    op = json.loads(js.read_text())["operating_point"]
    assert op["escape_rate"] is None and "no held-out good scores" in op["threshold_from"]
    assert "n/a" in capsys.readouterr().out
