"""Heat maps and anomaly-map grades speak in units of the threshold, on plain and fused bundles.

A fused bundle's threshold is a standardized score, not a patch distance; dividing distances by
it painted every patch of a good part as far past the threshold (reject images solid red, grade
inputs saturated).
"""
from __future__ import annotations

import numpy as np
import pytest

from device.images import list_images, read_rgb
from device.runtime import Inspector


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_texture_bundle"])
def test_good_parts_stay_below_the_threshold_on_the_anomaly_map(fixture, request, tiny_line):
    insp = Inspector.open(request.getfixturevalue(fixture), "int8")
    goods = [read_rgb(p) for p in list_images(tiny_line / "test" / "good")]
    maps = np.stack([insp.anomaly_map(rgb) for rgb in goods])
    # Most patches of good parts are well inside the good range; a good part's worst patch is
    # near the threshold, not many times past it.
    assert np.median(maps) < 0.8
    assert np.median(maps.max(axis=(1, 2))) < 1.5


def test_a_fused_bundles_reject_heat_map_shows_the_defect_not_the_part(tiny_texture_bundle, tiny_line):
    from device.bundle import load_bundle
    from device.selfcheck import self_check
    from device.station.model import Job, Model
    from device.station.retention import OVERLAY_ALPHA, heat_overlay

    bundle = load_bundle(tiny_texture_bundle)
    v = bundle.variant("int8")
    assert v.heat_floor is not None and 0 < v.heat_floor < v.fusion.patch_distance_at(v.normalization.threshold)
    model = Model(bundle, self_check(bundle, 1, "int8"), 1)
    paths = [q for d in ("crack", "spot", "scratch") for q in list_images(tiny_line / "test" / d)]
    heats = [d.heatmap for p in paths
             if (d := model.decide(Job(read_rgb(p), 0.0, 0.0, "free-run", None), 0.5, "s")).heatmap is not None]
    assert heats, "the tiny line's painted defects are rejected"
    # Heat is 0 at what good parts' patches rarely exceed and 1 at the threshold: most of a
    # rejected part is below 0 (drawn untinted), its worst place is past 1 (drawn at full colour).
    assert all(np.mean(h > 0) < 0.5 for h in heats)
    assert max(h.max() for h in heats) > 1.0
    frame = np.full((*heats[0].shape, 3), 128, np.uint8)
    untinted = np.all(heat_overlay(heats[0], frame, 2.0) == frame[..., ::-1], axis=-1)
    assert np.mean(untinted) > 0.5 and OVERLAY_ALPHA > 0
