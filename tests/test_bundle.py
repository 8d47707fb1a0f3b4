"""The bundle: what was evaluated is what the station runs, or it refuses and says why."""
import json
import shutil

import pytest

from device.bundle import MANIFEST, load_bundle
from device.errors import BundleError, KenpinError
from device.images import list_images, read_rgb
from device.runtime import Inspector


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_manifest_carries_preprocessing_thresholds_hashes_and_figures(tiny_bundle):
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    assert m["schema_version"] == 3 and m["preprocessing"]["width"] == 128
    for name in ("int8-w8", "int8-w7", "fp32"):
        v = m["variants"][name]
        assert v["threshold"] > 0 and v["calibration"]["n_images"] >= 5
        assert 0 <= v["evaluation"]["synthetic_auroc"] <= 1
        # every variant's scores of the probes, where it was exported: what the station checks against
        assert len(v["probe_scores"]["good"]) == m["probes"]["n_good"] >= 5
        assert len(v["probe_scores"]["defect"]) == m["probes"]["n_defect"] >= 5
    assert m["int8_default"] in ("int8-w8", "int8-w7")
    assert set(m["files"]) == {f"{kind}_{name}.{ext}" for name in ("fp32", "int8-w8", "int8-w7")
                               for kind, ext in (("embedder", "onnx"), ("bank", "npy"))} | {"probes.npz"}
    assert m["parity"]["chosen"]["method"].endswith("MinMax")
    assert m["recipe"]["bank"]["coreset_size"] == 300
    assert m["model_gmacs"] > 0  # what a Pi (no onnx there) estimates its speed from


@pytest.mark.parametrize("name", ["bank_int8-w8.npy", "probes.npz"])
def test_a_changed_byte_is_refused_naming_the_file(copy, name):
    path = copy / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}.*SHA-256"):
        load_bundle(copy)


@pytest.mark.parametrize("name", ["embedder_int8-w7.onnx", "probes.npz"])
def test_a_missing_file_is_refused(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=rf"{name}.*missing"):
        Inspector.open(copy)


def test_a_newer_schema_is_refused(copy):
    m = json.loads((copy / MANIFEST).read_text())
    m["schema_version"] = 99
    from device.bundle import manifest_digest

    m["manifest_sha256"] = manifest_digest(m)  # a genuine newer bundle, not a corrupted one
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this runtime"):
        load_bundle(copy)


def test_a_hand_edited_threshold_is_refused(copy):
    m = json.loads((copy / MANIFEST).read_text())
    m["variants"]["int8-w8"]["threshold"] = 0.0
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest was edited"):
        Inspector.open(copy)


def test_verdicts_follow_the_normalized_threshold(tiny_bundle, tiny_line):
    inspector = Inspector.open(tiny_bundle, "int8")
    for path in list_images(tiny_line / "test" / "good")[:3]:
        v = inspector.inspect(read_rgb(path), with_heatmap=True)
        assert v.threshold == 0.5 and 0 <= v.score <= 1
        assert (v.verdict == "defect") == (v.raw_score > v.raw_threshold)
        assert v.heatmap.shape == read_rgb(path).shape[:2]


def test_failed_training_leaves_the_previous_bundle_untouched(tiny_bundle, tiny_line, tmp_path):
    from dataclasses import replace

    from export.build import build_bundle
    from tests.conftest import tiny_recipe

    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = (out / MANIFEST).read_bytes()
    impossible = replace(tiny_recipe(), export=replace(tiny_recipe().export, parity_min_spearman=1.01))
    with pytest.raises(KenpinError, match="drifts from fp32"):
        build_bundle(tiny_line, out, impossible)
    assert (out / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp dir left behind


def test_int8_model_keeps_the_stem_in_fp32_and_quantizes_the_rest(tiny_bundle):
    import onnx

    g = onnx.load(str(tiny_bundle / "embedder_int8-w8.onnx")).graph
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    int8_weights = [c.input[1] in dq_outputs for c in convs]
    assert int8_weights[:3] == [False, False, False]  # recipe default export.fp32_leading_convs = 3
    assert all(int8_weights[3:])
