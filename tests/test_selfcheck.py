"""The station proves its bundle on its own CPU: mechanism tests that hold on every kind of CPU.

They never assert that one particular int8 variant passes here (that depends on the CPU's
kernels); they assert that whatever runs has passed, that a broken variant is refused and the
station falls back, and that a runtime which cannot reproduce fp32 refuses the bundle.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from device.bundle import MANIFEST, load_bundle, manifest_digest, sha256_file
from device.errors import BundleError, KenpinError
from device.scoring import Normalization
from device.selfcheck import open_checked, recalibrate, self_check
from device.station.metrics import exposition
from device.station.station import Station
from tests.station_helpers import replay_folder, station_config


def resign(root: Path, edit=lambda m: None) -> None:
    """Apply ``edit`` to the manifest, then re-hash every file and the manifest (a genuine bundle)."""
    m = json.loads((root / MANIFEST).read_text())
    edit(m)
    m["files"] = {n: sha256_file(root / n) for n in m["files"] if (root / n).is_file()}
    m["manifest_sha256"] = manifest_digest(m)
    (root / MANIFEST).write_text(json.dumps(m))


def corrupt_weight_scales(model: Path, seed: int = 0) -> None:
    """Multiply every weight's dequantization scales by random factors (a variant that judges wrongly)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model))
    inits = {i.name: i for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    for node in m.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            new = (scale * rng.uniform(0.2, 5.0, scale.shape)).astype(scale.dtype)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(new, node.input[1]))
    onnx.save(m, str(model))


@pytest.fixture()
def copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_the_variant_that_runs_has_passed_on_this_cpu(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    check = self_check(bundle, threads=1, full=True)
    tol = bundle.manifest["parity"]["tolerance"]
    by_name = {c.variant: c for c in check.checks}
    assert check.verified and set(by_name) == {"fp32", "int8-w8", "int8-w7"}
    chosen = by_name[check.chosen]
    assert chosen.status in ("passed", "reference")
    if chosen.status == "passed":
        assert chosen.spearman >= tol["min_spearman"] and chosen.mean_abs_diff <= tol["max_mean_abs_diff"]
    else:  # fp32 runs only when no int8 variant passed here, or when it is the faster one
        assert all(c.status != "passed" for c in check.checks) or chosen.ms_per_frame <= min(
            c.ms_per_frame for c in check.checks if c.status == "passed")
    for c in check.checks:  # each verdict of the table follows from its own figures
        if c.status in ("passed", "failed"):
            assert (c.status == "passed") == (c.spearman >= tol["min_spearman"]
                                              and c.mean_abs_diff <= tol["max_mean_abs_diff"])


def test_the_recalibrated_threshold_keeps_the_false_reject_target_on_the_probes(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    check = self_check(bundle, threads=1, full=True)
    target = bundle.manifest["calibration"]["target_false_reject_rate"]
    n_good = bundle.probes.n_good
    for c in check.checks:
        if c.probe_false_reject_rate is not None:
            # the tiny line's probes are its whole hold-out: the quantile rule leaves at most one above
            assert c.probe_false_reject_rate <= target + 1 / n_good


def test_recalibration_follows_the_shift_of_this_cpu_and_is_exact_where_exported():
    from device.bundle import ProbeScores, Variant

    good = np.linspace(1.0, 2.0, 40)
    v = Variant("int8-w8", "int8", Path("m"), Path("b"), Normalization(2.1, 0.3), (4, 4), 8,
                probe_scores=ProbeScores(good, np.array([3.0])))
    same = recalibrate(v, good, 0.01)
    assert same.threshold == pytest.approx(2.1) and same.scale == pytest.approx(0.3)
    shifted = recalibrate(v, good + 0.25, 0.01)
    assert shifted.threshold == pytest.approx(2.35) and shifted.scale == pytest.approx(0.3)
    spread = recalibrate(v, 1.0 + 2 * (good - 1.0), 0.01)  # this CPU's scores spread twice as wide
    assert spread.threshold > 2.1 + 0.9 and spread.scale == pytest.approx(0.6)


def test_a_variant_with_corrupted_scales_is_refused_and_the_station_falls_back(copy, tiny_line, tmp_path):
    default = load_bundle(copy).int8_default
    corrupt_weight_scales(copy / f"embedder_{default}.onnx")
    resign(copy)
    check = self_check(load_bundle(copy), threads=1, full=True)
    assert {c.variant: c.status for c in check.checks}[default] == "failed"
    assert check.chosen != default
    st = Station(station_config(tmp_path, copy, replay_folder(tiny_line, tmp_path / "replay"), mode="software"))
    st.start()
    try:
        status = st.status()["bundle"]
        assert status["precision"] != default and status["verified_on_this_cpu"]
        audit = [a for a in st.store.audit_log(50) if a["event"] == "self_check"]
        assert audit and audit[0]["detail"]["chosen"] == status["precision"]
    finally:
        st.stop()


def test_a_variant_this_cpu_cannot_create_is_skipped_with_its_reason(copy):
    (copy / "embedder_int8-w7.onnx").write_bytes(b"not an onnx model")
    resign(copy)
    check = self_check(load_bundle(copy), threads=1, full=True)
    w7 = next(c for c in check.checks if c.variant == "int8-w7")
    assert w7.status == "skipped" and "embedder_int8-w7.onnx" in w7.reason
    assert next(c for c in check.checks if c.variant == "int8-w8").status in ("passed", "failed")


def test_a_runtime_that_does_not_reproduce_fp32_refuses_the_bundle(copy, tmp_path, tiny_line):
    def drift(m):
        m["variants"]["fp32"]["probe_scores"]["good"][0] *= 1.01

    resign(copy, drift)
    with pytest.raises(BundleError, match="runtime differs"):
        self_check(load_bundle(copy), threads=1)
    st = Station(station_config(tmp_path, copy, replay_folder(tiny_line, tmp_path / "replay"), mode="software"))
    with pytest.raises(KenpinError, match="runtime differs"):
        st.start()


def _old_schema(m):
    """The manifest a bundle had before probes: one int8 variant named 'int8', no probe scores."""
    default = m.pop("int8_default")
    m.pop("probes")
    m["variants"] = {"int8" if k == default else k: v for k, v in m["variants"].items() if k in (default, "fp32")}
    for v in m["variants"].values():
        v.pop("probe_scores")
    m["files"] = {n: d for n, d in m["files"].items() if n != "probes.npz"}
    m["schema_version"] = 1


def test_a_bundle_without_probes_runs_unverified_and_says_so(copy, tmp_path, tiny_line, caplog):
    resign(copy, _old_schema)
    caplog.set_level(logging.WARNING)
    st = Station(station_config(tmp_path, copy, replay_folder(tiny_line, tmp_path / "replay"), mode="software"))
    st.start()
    try:
        status = st.status()["bundle"]
        assert status["precision"] == "int8" and status["verified_on_this_cpu"] is False
        assert "not verified" in status["self_check"].lower()
        warnings = [r for r in caplog.records if "could not be verified" in r.getMessage()]
        assert len(warnings) == 1
        assert b"kenpin_bundle_verified 0.0" in exposition(st)
    finally:
        st.stop()


def test_eval_opens_what_the_station_would_run_at_its_recalibrated_threshold(tiny_bundle):
    i8, check = open_checked(tiny_bundle, "int8", threads=1)
    assert i8.variant.name == check.chosen and i8.variant.normalization == check.variant.normalization
    named, full = open_checked(tiny_bundle, "int8-w7", threads=1)
    assert named.variant == full.checked["int8-w7"]
    with pytest.raises(BundleError, match="int8-w9"):
        open_checked(tiny_bundle, "int8-w9", threads=1)


def test_fp32_near_a_zero_score_is_judged_against_the_spread_of_good_scores_not_the_score():
    from types import SimpleNamespace

    from device.bundle import ProbeScores
    from device.selfcheck import _fp32_reproduces

    def station(scored: list[float]):  # scores a good and a defect probe as given; recorded: -0.00045, 3.0
        raw = iter(scored)
        v = SimpleNamespace(model="embedder_fp32.onnx", normalization=Normalization(2.0, 0.8),
                            probe_scores=ProbeScores(np.array([-0.00045]), np.array([3.0])))
        return SimpleNamespace(variant=v, judge=lambda frame, heat: SimpleNamespace(raw_score=next(raw)))

    probes = SimpleNamespace(good=["g"], defect=["d"])
    # A texture-fused score is a z-score and can sit at 0: 1.5e-6 is 0.3 % of -0.00045 but 2e-6 of
    # the good scores' spread (what an emulated Cortex-A72 moved one probe by).
    assert _fp32_reproduces(station([-0.0004515, 3.0]), probes, 1) == 2
    # Another instruction set's summation order, through the texture's Mahalanobis distance: 3.6e-4
    # of the spread (an AVX-512 export on an emulated AVX2 Haswell) is the same runtime.
    assert _fp32_reproduces(station([-0.00045 + 3.6e-4 * 0.8, 3.0]), probes, 1) == 2
    with pytest.raises(BundleError, match="runtime differs"):
        _fp32_reproduces(station([-0.01, 3.0]), probes, 1)  # 1.2 % of the spread: another runtime
    with pytest.raises(BundleError, match="runtime differs"):
        _fp32_reproduces(station([-0.00045, 3.01]), probes, 1)  # relative to a large score as before
