"""`kenpin tune --coreset-sizes`: each bank size judged on validation from one embedding pass."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kenpin.cli import main

RECIPE = "preprocess:\n  width: 128\n  height: 128\nbank:\n  coreset_size: 300\nbatch_size: 8\n"


def _rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if re.match(r"\| \d", line)]


def test_tune_prints_a_validation_row_per_bank_size(tiny_line: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert main(["tune", "--data", str(tiny_line), "--recipe", str(recipe), "--coreset-sizes", "400", "50"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(r[0], r[1], r[2]) for r in rows] == [("304", "full", "50"), ("304", "full", "400")]
    aurocs = [float(r[4]) for r in rows]
    assert all(0.5 <= a <= 1.0 for a in aurocs)


def test_tune_refuses_an_empty_bank(tiny_line: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert main(["tune", "--data", str(tiny_line), "--recipe", str(recipe), "--coreset-sizes", "0", "100"]) == 2
    err = capsys.readouterr().err
    assert "--coreset-sizes 0 100" in err and "at least 1" in err
