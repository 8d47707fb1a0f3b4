"""`kenpin compare --per-type K ...`: the curve over K real defects per type, every point on one test set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kenpin.cli import main
from training.evaluate import auroc_standard_error
from test_metric_training import TINY_YAML


def test_the_curve_scores_frozen_and_each_k_on_the_images_left_at_the_largest_k(tiny_line: Path, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]):
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    w = tmp_path / "w"
    assert main(["compare", "--data", str(tiny_line), "--recipe", str(tmp_path / "tiny.yaml"), "--workdir", str(w),
                 "--per-type", "1", "0"]) == 0
    out = capsys.readouterr().out
    curve = json.loads((w / "curve.json").read_text())
    assert [p["per_type"] for p in curve["points"]] == [0, 1]
    test_dir = w / "K1" / "data" / "test"
    assert curve["test_set"] == str(test_dir)
    moved = {(d.name, p.name) for d in (w / "K1" / "data" / "train").iterdir() if d.name != "good"
             for p in d.iterdir()}
    left = {(d.name, p.name) for d in test_dir.iterdir() if d.name != "good" for p in d.iterdir()}
    kept = {d.name: len(list(d.iterdir())) for d in test_dir.iterdir()}
    assert moved and not moved & left  # no point is scored on a defect some K trained on
    assert not any((w / "K0" / "data" / "train").glob("[!g]*/*"))  # K=0 trains on good images only
    for p in [curve["frozen"], *curve["points"]]:
        assert 0 <= p["image_auroc"] <= 1 and p["auroc_se"] > 0 and 0 <= p["escapes_at_1pct_test_frr"] <= 1
        assert {d: v["n"] for d, v in p["per_defect"].items()} == {d: n for d, n in kept.items() if d != "good"}
    scored = json.loads((w / "K1" / "trained-eval.json").read_text())["images"]  # each point's scores kept
    assert len(scored) == sum(kept.values())
    assert "| frozen 304-d | — |" in out and "| trained 304-d | 1 |" in out
    # the same folder with another seed would mix two protocols: refused, nothing touched
    before = sorted(str(p) for p in w.rglob("*"))
    assert main(["compare", "--data", str(tiny_line), "--recipe", str(tmp_path / "tiny.yaml"), "--workdir", str(w),
                 "--per-type", "0", "1", "--seed", "5"]) == 2
    assert "seed 5" in capsys.readouterr().err and sorted(str(p) for p in w.rglob("*")) == before


def test_a_k_larger_than_a_defect_type_names_the_type_and_its_count(tiny_line: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]):
    assert main(["compare", "--data", str(tiny_line), "--workdir", str(tmp_path / "w"), "--per-type", "0", "9"]) == 2
    err = capsys.readouterr().err
    assert "--per-type 9" in err and "has only" in err
    assert not (tmp_path / "w" / "frozen").exists()


def test_the_standard_error_shrinks_with_more_images_and_is_hanley_mcneils():
    assert auroc_standard_error(0.8, 50, 50) == pytest.approx(0.0445, abs=5e-4)  # Hanley & McNeil (1982)'s formula
    assert auroc_standard_error(0.95, 400, 200) < auroc_standard_error(0.95, 40, 20)


def test_escapes_at_1pct_test_frr_put_the_threshold_where_one_good_part_in_a_hundred_is_rejected():
    from training.evaluate import escapes_at_test_frr

    y = np.r_[np.zeros(100, bool), np.ones(3, bool)]
    s = np.r_[np.arange(100.0), 50.0, 98.5, 100.0]  # threshold 98: only good 99 is above it
    assert escapes_at_test_frr(y, s) == pytest.approx(1 / 3)
    assert escapes_at_test_frr(y[:100], s[:100]) is None  # no defective image: nothing to say
