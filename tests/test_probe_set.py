"""The bundle's probe set stays within the recipe's byte budget (export.probe_max_mb)."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from device.probes import PROBES_FILE, encoded_bytes, read_probes, write_probes
from export.build import prepare_inputs
from export.probe_set import within_budget
from kenpin.bench_inputs import tiny_recipe


def _with_budget(mb: float):
    r = tiny_recipe()
    return replace(r, export=replace(r.export, probe_max_mb=mb))


def test_a_probe_set_over_its_budget_keeps_fewer_of_both_kinds_and_the_file_fits(tiny_line, tmp_path):
    full = prepare_inputs(tiny_line, _with_budget(100.0))
    total = sum(encoded_bytes(im) for im in [*full.probe_good, *full.probe_defect])
    budget_mb = total / 2 / 1e6
    half = prepare_inputs(tiny_line, _with_budget(budget_mb))
    assert len(half.probe_good) < len(full.probe_good) and len(half.probe_defect) < len(full.probe_defect)
    assert len(half.probe_good) >= 4 and len(half.probe_defect) >= 1
    path = tmp_path / PROBES_FILE
    write_probes(path, half.probe_good, half.probe_defect)
    assert path.stat().st_size <= budget_mb * 1e6
    size = (tiny_recipe().preprocess.width, tiny_recipe().preprocess.height)
    back = read_probes(path, len(half.probe_good), len(half.probe_defect), size)
    assert all((a == b).all() for a, b in zip(back.all, [*half.probe_good, *half.probe_defect]))


def test_a_budget_too_small_for_the_minimum_keeps_the_minimum_and_warns(tiny_line, caplog):
    with caplog.at_level(logging.WARNING, logger="export.probe_set"):
        inputs = prepare_inputs(tiny_line, _with_budget(0.001))
    assert (len(inputs.probe_good), len(inputs.probe_defect)) == (4, 1)
    assert "over export.probe_max_mb" in caplog.text


def test_budget_shrinks_both_kinds_in_proportion():
    assert within_budget([100] * 40, [100] * 24, 10**9) == (40, 24)
    n_g, n_d = within_budget([100_000] * 40, [100_000] * 24, 5_000_000)
    assert n_g + n_d <= 49 and abs(n_g / 40 - n_d / 24) < 0.1


def test_the_bundle_records_its_probe_bytes_within_its_budget(tiny_bundle):
    m = json.loads((Path(tiny_bundle) / "manifest.json").read_text())
    probes = m["probes"]
    assert probes["bytes"] == (Path(tiny_bundle) / PROBES_FILE).stat().st_size
    assert probes["bytes"] <= probes["max_mb"] * 1e6


def test_a_budget_that_is_not_positive_is_refused():
    from training.recipe import ExportSpec

    with pytest.raises(Exception, match="probe_max_mb"):
        ExportSpec(probe_max_mb=0)
