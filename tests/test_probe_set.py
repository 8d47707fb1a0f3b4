"""The bundle's probe set stays within the recipe's byte budget (export.probe_max_mb) and keeps the
station's start-up check within its Pi 4 time budget (export.probe_max_pi4_s)."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from device.probes import PROBES_FILE, encoded_bytes, read_probes, write_probes
from export.build import prepare_inputs
from export.probe_set import within_budget, within_check_time
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


def test_a_large_model_keeps_fewer_probes_so_the_start_up_check_fits_its_time_budget():
    from device.macs import pi_model_ms
    from device.selfcheck import startup_runs
    from training.recipe import ExportSpec

    spec = ExportSpec()
    assert within_check_time(40, 24, 2, None, spec) == (40, 24)  # no MAC count: nothing to go by
    assert within_check_time(40, 24, 2, 0.3, spec) == (40, 24)  # a 224 px model: all fit
    big = 3.344  # GMACs of ball_screw's 1120x448 model
    n_g, n_d = within_check_time(40, 24, 2, big, spec)
    assert n_g < 40 and n_d < 24 and abs(n_g / 40 - n_d / 24) < 0.1
    assert startup_runs(n_g, n_d, 2) * pi_model_ms(big, "Raspberry Pi 4") <= spec.probe_max_pi4_s * 1e3
    assert startup_runs(n_g + 1, n_d + 1, 2) * pi_model_ms(big, "Raspberry Pi 4") > spec.probe_max_pi4_s * 1e3


def test_the_start_up_check_makes_the_model_runs_the_export_budgets_for(tiny_bundle):
    from device.bundle import load_bundle
    from device.selfcheck import self_check, startup_runs

    bundle = load_bundle(tiny_bundle)
    check = self_check(bundle)
    n_g, n_d = bundle.probes.n_good, bundle.probes.n_defect
    int8s = [c for c in check.checks if c.variant != "fp32"]
    scored = sum(c.status in ("passed", "failed") for c in int8s)  # variants that scored every probe
    # the budget's usual path scores the probes with one int8 variant; each other one checked adds a pass
    assert check.model_runs == startup_runs(n_g, n_d, len(int8s)) + (scored - 1) * (n_g + n_d)


def test_an_export_over_its_start_up_budget_carries_fewer_probes_and_says_so(tiny_line, tiny_bundle, tmp_path):
    from device.bundle import load_bundle
    from device.macs import pi_model_ms
    from device.selfcheck import self_check, startup_estimate, startup_runs
    from export.build import build_bundle

    full = load_bundle(tiny_bundle)
    ms = pi_model_ms(full.manifest["model_gmacs"], "Raspberry Pi 4")
    seconds = startup_runs(full.probes.n_good, full.probes.n_defect, 2) * ms / 1e3 * 0.7
    r = tiny_recipe()
    body = build_bundle(tiny_line, tmp_path / "b", replace(r, export=replace(r.export, probe_max_pi4_s=seconds)))
    n_g, n_d = body["probes"]["n_good"], body["probes"]["n_defect"]
    assert n_g < full.probes.n_good and body["probes"]["max_pi4_s"] == seconds
    assert startup_runs(n_g, n_d, 2) * ms / 1e3 <= seconds
    small = load_bundle(tmp_path / "b")
    check = self_check(small)
    assert check.verified and startup_estimate(small, check) is not None
