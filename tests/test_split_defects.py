"""`kenpin split-defects`: K real defects per type move to train/, the rest stay in test/, no leak."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.images import list_images
from kenpin.cli import main
from training.dataset import scan_mvtec
from training.metric.pair_sampling import labeled_defects


def _names(folder: Path) -> set[str]:
    return {p.name for p in list_images(folder)}


def test_k_per_type_move_to_train_with_masks_and_nothing_leaks(tiny_line, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["split-defects", "--data", str(tiny_line), "--per-type", "1", "--seed", "4", "--out", str(out)]) == 0
    assert "report on test/ only" in capsys.readouterr().out
    src = scan_mvtec(tiny_line, need_test=True)
    for defect in src.defect_types:
        moved, kept = _names(out / "train" / defect), _names(out / "test" / defect)
        assert len(moved) == 1 and not moved & kept, defect
        assert moved | kept == _names(tiny_line / "test" / defect)
    assert _names(out / "train" / "good") == _names(tiny_line / "train" / "good")
    assert _names(out / "test" / "good") == _names(tiny_line / "test" / "good")
    # training finds the moved ones with their masks; evaluation finds only what stayed
    found = labeled_defects(out)
    assert len(found) == len(src.defect_types) and all(d.mask is not None for d in found)
    test_items = {(t.defect, t.path.name) for t in scan_mvtec(out, need_test=True).test if t.is_defective}
    assert not test_items & {(d.defect, d.path.name) for d in found}
    assert all(p.is_symlink() for p in (out / "train" / "good").iterdir())  # links, not copies
    record = json.loads((out / "SPLIT.json").read_text())
    assert record["per_type"] == 1 and record["seed"] == 4


def test_the_pick_follows_the_seed(tiny_line, tmp_path):
    def picked(seed: int, name: str) -> dict:
        main(["split-defects", "--data", str(tiny_line), "--per-type", "1", "--seed", str(seed),
              "--out", str(tmp_path / name)])
        return json.loads((tmp_path / name / "SPLIT.json").read_text())["moved_to_train"]

    assert picked(1, "a") == picked(1, "b")


def test_k_larger_than_a_type_names_the_type_and_its_count_and_writes_nothing(tiny_line, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["split-defects", "--data", str(tiny_line), "--per-type", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has only 2 images" in err and "test/" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_existing_out_folder_is_never_overwritten(tiny_line, tmp_path, capsys):
    out = tmp_path / "split"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["split-defects", "--data", str(tiny_line), "--per-type", "0", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("k", [-1])
def test_a_negative_k_is_refused(tiny_line, tmp_path, capsys, k):
    assert main(["split-defects", "--data", str(tiny_line), "--per-type", str(k), "--out", str(tmp_path / "s")]) == 2
    assert "--per-type" in capsys.readouterr().err
