"""`kenpin train` without --recipe chooses the recipe on validation, never on test/, and says why."""
from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from device.bundle import load_bundle
from kenpin.cli import main
from training import recipe_choice
from training.recipe_choice import candidates, choose_recipe, frame_geometry, input_size

SMALL = (("96", 96 * 96), ("160", 160 * 160))  # the tiny line's 160 px frames: no native candidate, 4 fits


def test_a_tall_frame_gets_a_tall_input_not_a_square():
    w, h = input_size(500 / 1250, 224 * 224)
    assert h > 2 * w and w % 32 == 0 and h % 32 == 0
    assert abs(w * h - 224 * 224) / (224 * 224) < 0.2
    assert input_size(1.0, 384 * 384) == (384, 384)
    assert input_size(1130 / 460, 384 * 384)[0] / input_size(1130 / 460, 384 * 384)[1] == pytest.approx(2.4, abs=0.3)


def test_candidates_follow_the_frames_aspect(tmp_path):
    good = tmp_path / "d" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(good / f"{i}.png"), np.zeros((1250, 500), np.uint8))
    assert frame_geometry(tmp_path / "d").aspect == pytest.approx(0.4)
    assert frame_geometry(tmp_path / "d").pixels == 1250 * 500
    from training.recipe import Recipe

    cands = candidates(Recipe(), 0.4)
    assert len(cands) == 4 and {c.recipe.scoring.texture for c in cands} == {False, True}
    assert all(c.recipe.preprocess.height > c.recipe.preprocess.width for c in cands)


def test_the_choice_is_the_best_validation_auroc_and_never_reads_test(tiny_line, tmp_path, monkeypatch):
    from tests.conftest import tiny_recipe

    seen = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda p, *a: seen.append(str(p)) or real_imread(p, *a))
    recipe, record = choose_recipe(tiny_line, tiny_recipe(), SMALL)
    assert not [p for p in seen if "/test/" in p]
    rows = record["candidates"]
    assert len(rows) == 4 and record["chosen"] in {r["name"] for r in rows}
    top = max(r["validation_auroc"] for r in rows)
    chosen = next(r for r in rows if r["name"] == record["chosen"])
    assert chosen["validation_auroc"] >= top - recipe_choice.AUROC_TIE
    tied = [r for r in rows if r["validation_auroc"] >= top - recipe_choice.AUROC_TIE]
    assert chosen["validation_escape_rate"] == min(r["validation_escape_rate"] for r in tied)
    assert f"{recipe.preprocess.width}x{recipe.preprocess.height}" == chosen["input"]
    assert "never test/" in record["reason"]


def test_train_without_a_recipe_records_the_candidates_in_the_bundle(tiny_line, tmp_path, monkeypatch, capsys):
    from tests.conftest import tiny_recipe

    monkeypatch.setattr(recipe_choice, "BUDGETS", SMALL)
    monkeypatch.setattr(recipe_choice, "Recipe", tiny_recipe)  # the tiny line's quick export settings
    out = tmp_path / "b"
    assert main(["train", "--data", str(tiny_line), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    m = load_bundle(out).manifest
    assert m["recipe_choice"]["chosen"] in printed and len(m["recipe_choice"]["candidates"]) == 4
    w, h = m["preprocessing"]["width"], m["preprocessing"]["height"]
    assert f"{w}x{h}" == next(r["input"] for r in m["recipe_choice"]["candidates"]
                              if r["name"] == m["recipe_choice"]["chosen"])


def test_frames_much_larger_than_the_inputs_also_get_a_native_resolution_candidate():
    from training.recipe_choice import Frames, budgets_for

    assert [n for n, _ in budgets_for(Frames(1130 / 460, 1130 * 460))] == ["224", "384", "native"]
    assert input_size(1130 / 460, 1130 * 460) == (1120, 448)  # a pit stays as wide as in the frame
    assert [n for n, _ in budgets_for(Frames(1.0, 314 * 314))] == ["224", "384"]  # small frames: no
    w, h = input_size(0.1, 4000 * 400)  # a very long part: both sides shrink, the aspect survives
    assert max(w, h) <= recipe_choice.MAX_SIDE and h / w == pytest.approx(10, rel=0.2)


def _pi4_ms(budget: int) -> float:
    """The Pi 4 ESTIMATE of the tiny recipe's model at a square input of ``budget`` pixels."""
    from device.macs import pi_model_ms
    from tests.conftest import tiny_recipe
    from training.features import PatchEmbedder

    c = next(c for c in candidates(tiny_recipe(), 1.0, (("b", budget),)))
    return pi_model_ms(recipe_choice._gmacs(PatchEmbedder(c.recipe.features).eval(), c.recipe), "Raspberry Pi 4")


def test_a_pace_limit_leaves_out_the_inputs_a_pi_could_not_keep_up_with(tiny_line):
    from tests.conftest import tiny_recipe

    limit = 1.5 * _pi4_ms(96 * 96)
    assert _pi4_ms(160 * 160) > limit  # the larger input is over it
    recipe, record = choose_recipe(tiny_line, tiny_recipe(), SMALL, max_pi4_ms=limit)
    left_out = [r for r in record["candidates"] if r.get("over_cost")]
    assert {r["input"] for r in left_out} == {"160x160"} and len(left_out) == 2
    assert all("validation_auroc" not in r and r["pi4_model_ms_estimate"] > limit for r in left_out)
    assert (recipe.preprocess.width, recipe.preprocess.height) == (96, 96)
    assert record["max_pi4_ms"] == limit and "left out" in record["reason"]


def test_a_pace_no_candidate_meets_is_one_sentence_before_any_fitting(tiny_line, capsys):
    from tests.conftest import tiny_recipe

    with pytest.raises(Exception, match=r"--max-pi4-ms .*the cheapest, 96"):
        choose_recipe(tiny_line, tiny_recipe(), SMALL, max_pi4_ms=_pi4_ms(96 * 96) / 2)
    assert "validation AUROC" not in capsys.readouterr().out
    assert main(["train", "--data", str(tiny_line), "--out", "unused", "--recipe", "configs/recipe.yaml",
                 "--max-pi4-ms", "50"]) != 0
    assert "--max-pi4-ms limits the recipe chosen" in capsys.readouterr().err
