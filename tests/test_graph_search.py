"""`scoring.search: int8`: each int8 variant ships its bank search as an int8 graph, calibrated
through it; the station searches with it and its own check covers it."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device.bundle import load_bundle
from device.errors import BundleError, KenpinError
from device.graph_search import GraphSearch
from device.images import list_images, read_rgb
from device.runtime import Inspector
from device.scoring import NearestNeighbourScorer, texture_descriptor
from device.selfcheck import self_check
from tests.conftest import tiny_recipe
from tests.test_selfcheck import resign
from training.recipe import ScoringSpec


@pytest.fixture(scope="module")
def int8_search_bundle(tiny_line, tmp_path_factory) -> Path:
    from export.build import build_bundle

    r = tiny_recipe()
    out = tmp_path_factory.mktemp("int8-search") / "bundle"
    build_bundle(tiny_line, out, replace(r, scoring=replace(r.scoring, texture=True, search="int8")))
    return out


def test_each_int8_variant_searches_with_its_own_graph_and_fp32_keeps_the_gemm(int8_search_bundle, tiny_line):
    bundle = load_bundle(int8_search_bundle)
    assert bundle.manifest["variants"]["fp32"].get("search") is None
    frame = read_rgb(list_images(tiny_line / "test" / "good")[0])
    for name in ("int8-w8", "int8-w7"):
        entry = bundle.manifest["variants"][name]
        assert entry["search"] == f"search_{name}.onnx" and entry["search"] in bundle.manifest["files"]
        insp = Inspector(bundle, name, threads=1)
        assert isinstance(insp.scorer, GraphSearch)
        patches = insp.embed(frame)
        exact = NearestNeighbourScorer(np.load(insp.variant.bank)).distances(patches)
        rel = np.abs(insp.scorer.distances(patches) - exact) / exact
        assert 0 < rel.mean() < 0.02  # really int8, and close to the exact search
    assert isinstance(Inspector(bundle, "fp32", threads=1).scorer, NearestNeighbourScorer)


def test_on_the_exporting_cpu_the_station_reproduces_the_calibration_through_the_graph(int8_search_bundle):
    bundle = load_bundle(int8_search_bundle)
    check = self_check(bundle, threads=1, full=True)
    for name in ("int8-w8", "int8-w7"):
        # The threshold moves only if the station's probe scores differ from those the export
        # recorded: unchanged here means it searched exactly as the calibration did.
        assert check.checked[name].normalization.threshold == pytest.approx(
            bundle.variant(name).normalization.threshold, abs=1e-9)


def test_the_graph_also_gives_the_texture_distance_of_the_same_patches(int8_search_bundle, tiny_line):
    bundle = load_bundle(int8_search_bundle)
    insp = Inspector(bundle, "int8-w8", threads=1)
    assert insp.scorer.scores_texture
    for path in list_images(tiny_line / "test" / "good")[:2] + list_images(tiny_line / "test" / "scratch")[:2]:
        patches = insp.embed(read_rgb(path))
        distances, texture = insp.scorer.search(patches)
        numpy_texture = insp.variant.texture.distance(texture_descriptor(patches))
        assert texture == pytest.approx(numpy_texture, rel=1e-4)  # float32 in the graph, float64 in numpy
        worst, tex, _ = insp.image_scorer.parts(patches)
        assert (worst, tex) == (float(distances.max()), texture)  # the station takes the graph's


def test_a_search_graph_without_the_texture_output_still_scores_texture_in_numpy(int8_search_bundle, tiny_line,
                                                                                 tmp_path):
    from export.search_graph import write_int8_search

    root = Path(shutil.copytree(int8_search_bundle, tmp_path / "b"))
    bank = np.load(root / "bank_int8-w8.npy")
    write_int8_search(bank, root / "search_int8-w8.onnx", reduce_range=False)  # as exported before 2026-12-04
    resign(root, lambda m: None)
    insp = Inspector(load_bundle(root), "int8-w8", threads=1)
    assert not insp.scorer.scores_texture
    patches = insp.embed(read_rgb(list_images(tiny_line / "test" / "good")[0]))
    _, tex, _ = insp.image_scorer.parts(patches)
    assert tex == insp.variant.texture.distance(texture_descriptor(patches))


def test_a_bundle_from_before_the_int8_search_still_searches_with_the_gemm(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert all("search" not in v for v in bundle.manifest["variants"].values())
    assert isinstance(Inspector(bundle, "int8-w8", threads=1).scorer, NearestNeighbourScorer)


def test_a_search_file_the_manifest_does_not_list_is_refused(int8_search_bundle, tmp_path):
    root = Path(shutil.copytree(int8_search_bundle, tmp_path / "b"))
    resign(root, lambda m: m["variants"]["int8-w8"].update(search="elsewhere.onnx"))
    with pytest.raises(BundleError, match=r"variants.int8-w8.search = 'elsewhere.onnx' is not a file listed"):
        load_bundle(root)
    (root / "search_int8-w7.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="search_int8-w7.onnx: SHA-256 does not match"):
        load_bundle(root)


def test_a_recipe_asking_for_another_search_is_refused():
    with pytest.raises(KenpinError, match="search = 'int4'.*use 'fp32' or 'int8'"):
        ScoringSpec(search="int4")


def test_kenpin_bench_sets_a_compact_or_int8_search_recipe_beside_the_full_fp32_one():
    from kenpin.bench import _baseline
    from training.recipe import ReductionSpec

    r = tiny_recipe()
    int8 = replace(r, scoring=replace(r.scoring, search="int8"))
    assert _baseline(None) is None and _baseline(r) is None  # nothing to compare against
    assert _baseline(int8) == r and _baseline(replace(int8, reduction=ReductionSpec(dim=16))) == r
