"""The capture-quality gate and the grade, end to end on the tiny line: train → int8 bundle → station runtime."""
import json
import shutil

import cv2
import numpy as np
import pytest

from device.bundle import MANIFEST, load_bundle, manifest_digest
from device.errors import BundleError, KenpinError
from device.images import list_images, read_rgb
from device.quality import Grader, QualityGate, best_of
from device.runtime import Inspector
from training.rank.degrade import degrade, to_float, to_uint8
from training.rank.metrics import kendall_tau

TINY_RECIPE = """
quality:
  input: {size: 32, crops: 2, stats: true}
  images: 0
  holdout_fraction: 0.4   # 12 clean frames: five family floors need more than the default's 6
  train: {steps: 300, batch_pairs: 16, width: 8}
grade:
  input: {size: 32, crops: 0}
  train: {steps: 100, batch_pairs: 16, width: 8}
export:
  quant_images: 16
  quant_methods: [MinMax]
"""


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "ranker.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="module")
def gated(tiny_bundle, tiny_line, recipe_file, tmp_path_factory):
    """A copy of the tiny bundle with a quality gate added by the CLI."""
    from kenpin.cli import main

    dst = tmp_path_factory.mktemp("gated") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    assert main(["train-ranker", "--bundle", str(dst), "--data", str(tiny_line), "--recipe", str(recipe_file)]) == 0
    return dst


def _frames(tiny_line):
    return [read_rgb(p) for p in list_images(tiny_line / "test" / "good")]


def _bad(rgb, kind, param, seed=0):
    return to_uint8(degrade(to_float(rgb), kind, param, np.random.default_rng(seed)))


def test_the_gate_joins_the_bundle_hashed_and_the_anomaly_model_is_untouched(gated, tiny_bundle):
    m = json.loads((gated / MANIFEST).read_text())
    q = m["rankers"]["quality"]
    assert {q["model"], q["fp32_model"]} <= set(m["files"]) and np.isfinite(q["floor"])
    assert q["calibration"]["n_images"] >= 5 and q["parity"]["chosen"]["method"] == "MinMax"
    old = json.loads((tiny_bundle / MANIFEST).read_text())
    assert m["bundle_id"] != old["bundle_id"]
    assert m["variants"] == old["variants"] and "quality" in m["roles"]
    assert Inspector.open(gated).bundle.rankers["quality"].input.crops == 2
    assert q["input"]["stats"] and q["input_shape"] == [1, 4, 32, 32]  # gray + 2 crops + statistics plane


def test_a_bundle_without_a_quality_model_has_no_gate(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.rankers == {} and QualityGate.from_bundle(b) is None and Grader.from_bundle(b) is None


def test_the_gate_scores_clean_frames_above_badly_captured_ones(gated, tiny_line):
    gate = QualityGate.from_bundle(load_bundle(gated))
    frames = _frames(tiny_line)
    clean = np.array([gate.score(f) for f in frames])
    # (sensor noise needs more training than these seconds allow: measured on real data, BENCHMARKS.md)
    for kind, param in (("defocus", 4.5), ("under", 0.3), ("over", 2.2), ("occlusion", 0.3)):
        bad = np.array([gate.score(_bad(f, kind, param)) for f in frames])
        assert np.mean(clean > bad) >= 0.75, kind
    # heavily blurred frames fall below the floor and would be retaken; clean ones mostly pass
    assert np.mean([gate.passes(s) for s in clean]) >= 0.5
    assert np.mean([gate.passes(gate.score(_bad(f, "defocus", 6.5))) for f in frames]) <= 0.25


def test_each_family_has_its_own_floor_and_names_why_a_frame_is_retaken(gated, tiny_line):
    gate = QualityGate.from_bundle(load_bundle(gated))
    assert gate.families == ("noise", "sharpness", "dark", "bright", "obstruction") and gate.floor == 0.0
    frames = _frames(tiny_line)
    for kind, param, family in (("defocus", 6.5, "sharpness"), ("under", 0.25, "dark"), ("over", 3.0, "bright")):
        bad = [_bad(f, kind, param) for f in frames]
        m = np.array([gate.margins(b) for b in bad])
        # the family the degradation belongs to is below its own floor (others may be too)
        assert np.mean(m[:, gate.families.index(family)] < 0) >= 0.75, kind
        # the gate's quality is the weakest family's margin, and that family is named
        assert np.allclose([gate.score(b) for b in bad], m.min(1), atol=1e-5)
        assert [gate.weakest(b) for b in bad] == [gate.families[i] for i in m.argmin(1)]
    # noise raises fine detail, which the sharpness family reads as *better*: only its own column ranks it
    col = gate.families.index("noise")
    clean = np.array([gate.family_scores(f)[col] for f in frames])
    noisy = np.array([gate.family_scores(_bad(f, "noise", 0.05)) for f in frames])
    assert np.mean(clean > noisy[:, col]) >= 0.75


def test_best_of_a_burst_picks_the_clean_frame(gated, tiny_line):
    gate = QualityGate.from_bundle(load_bundle(gated))
    picks = [best_of(gate, [_bad(f, "defocus", 4.5), f, _bad(f, "over", 2.2)])[0] for f in _frames(tiny_line)]
    assert np.mean(np.array(picks) == 1) >= 0.75
    with pytest.raises(KenpinError, match="no frames"):
        best_of(gate, [])


def test_a_hand_edited_floor_is_refused(gated, tmp_path):
    dst = shutil.copytree(gated, tmp_path / "b")
    m = json.loads((dst / MANIFEST).read_text())
    m["rankers"]["quality"]["floor"] = -1e9
    (dst / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest_sha256"):
        load_bundle(dst)


def test_a_ranker_whose_shape_does_not_match_its_input_is_refused(gated, tmp_path):
    dst = shutil.copytree(gated, tmp_path / "b")
    m = json.loads((dst / MANIFEST).read_text())
    m["rankers"]["quality"]["input_shape"] = [1, 5, 64, 64]
    m["manifest_sha256"] = manifest_digest(m)
    (dst / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"rankers\.quality\.input_shape"):
        load_bundle(dst)


@pytest.mark.parametrize("grade_input", ["{size: 32, crops: 0}", "{source: anomaly, size: 32, crops: 0, stats: true}"],
                         ids=["embedding", "anomaly-map"])
def test_grade_learns_an_operator_order_and_generalises_to_unrated_parts(gated, tiny_line, recipe_file, tmp_path,
                                                                         grade_input, capsys):
    """Operators rate darker captures of a part lower; the grade ranks unseen parts the same way."""
    from kenpin.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_file.read_text().replace("input: {size: 32, crops: 0}\n", f"input: {grade_input}\n"))

    gains = (0.35, 0.6, 1.0)
    parts = list_images(tiny_line / "train" / "good")
    lines = ["image,rating"]
    for i, p in enumerate(parts[:10]):
        for g in gains:
            name = f"p{i}_{g}.png"
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(_bad(read_rgb(p), "under", g), cv2.COLOR_RGB2BGR))
            lines.append(f"{name},{g}")
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    dst = shutil.copytree(gated, tmp_path / "graded")
    assert main(["train-ranker", "--bundle", str(dst), "--role", "grade", "--ratings", str(tmp_path / "ratings.csv"),
                 "--recipe", str(recipe)]) == 0
    b = load_bundle(dst)
    assert set(b.rankers) == {"quality", "grade"}  # the gate stays
    assert b.rankers["grade"].input.source == ("anomaly" if "anomaly" in grade_input else "embedding")
    insp = Inspector(b, "int8", 1, rankers=True)
    grader = insp.grader
    held = [(insp.grade(_bad(read_rgb(p), "under", g)), g) for p in parts[20:26] for g in gains]
    assert kendall_tau(np.array([s for s, _ in held]), np.array([g for _, g in held])) >= 0.5
    assert 0.0 <= grader.percentile(held[0][0]) <= 1.0
    # the station grades a defect from what judging it computed, and agrees with the whole-frame grade
    import time

    from device.selfcheck import self_check
    from device.station.model import Job, Model

    frame = read_rgb(parts[21])  # a well-captured frame (a dark one would be retaken by the gate)
    check = self_check(b, 1, "int8")  # the int8 variant it picks can depend on this CPU's timings
    model = Model(b, check, 1)
    decision = model.decide(Job(frame, 0.0, time.perf_counter(), "free-run", None), 1e-6, "line")
    assert decision.record.verdict == "defect"
    same = Inspector(b, check.variant, 1, rankers=True)  # the whole-frame grade with that same variant
    assert decision.record.grade == pytest.approx(same.grader.percentile(same.grade(frame)))
    # eval-ranker grades whole rated frames the same way (the anomaly model runs first)
    capsys.readouterr()
    assert main(["eval-ranker", "--bundle", str(dst), "--role", "grade", "--ratings", str(tmp_path / "ratings.csv")]) == 0
    assert "Kendall τ" in capsys.readouterr().out


def test_cli_errors_are_one_sentence(gated, tmp_path, capsys):
    from kenpin.cli import main

    assert main(["train-ranker", "--bundle", str(gated), "--role", "grade"]) == 2
    assert "--ratings" in capsys.readouterr().err
    (tmp_path / "r.csv").write_text("image,rating\nmissing.png,1\n")
    assert main(["train-ranker", "--bundle", str(gated), "--role", "grade", "--ratings", str(tmp_path / "r.csv")]) == 2
    assert "r.csv:2: image 'missing.png' does not exist" in capsys.readouterr().err


def test_eval_ranker_reports_held_out_degradations_cost_and_a_plot(gated, tiny_line, tmp_path, capsys):
    from kenpin.cli import main

    out = tmp_path / "q.json"
    assert main(["eval-ranker", "--bundle", str(gated), "--data", str(tiny_line), "--json", str(out),
                 "--report", str(tmp_path / "rep")]) == 0
    m = json.loads(out.read_text())
    kinds = {r["kind"] for r in m["rows"]}
    assert {"noise", "defocus", "motion", "under", "over", "jpeg", "glare", "occlusion"} <= kinds
    assert {r["path"] for r in m["rows"] if r["kind"] == "noise"} == {"uint8", "float"}
    defocus = [r["pairwise_accuracy"] for r in m["rows"] if r["kind"] == "defocus"]
    assert {r["family"] for r in m["rows"] if r["kind"] in ("under", "gamma_dark")} == {"dark"}
    assert [f["name"] for f in m["families"]] == ["noise", "sharpness", "dark", "bright", "obstruction"]
    assert min(defocus) >= 0.75 and m["cost"]["ratio"] > 0
    assert (tmp_path / "rep" / "quality_vs_strength.png").stat().st_size > 10_000
    assert "cost per frame" in capsys.readouterr().out
    f = m["verdict_flips"]
    assert f["gate_follows_verdicts"] and f["n_images"] == sum(len(list_images(d)) for d in (tiny_line / "test").iterdir())
    assert {r["kind"] for r in f["rows"]} == kinds and all(0 <= r["flip_rate"] <= 1 for r in f["rows"])
    for r in f["rows"]:  # recall and waste are shares of the flipped and the unflipped frames of each strength
        assert r["n_flipped"] == round(r["flip_rate"] * r["n"])
        assert r["flipped_retaken"] is None or r["n_flipped"] and 0 <= r["flipped_retaken"] <= 1
    assert set(f["degraded_with_gate"]) == {"false_rejects", "escapes"} and 0 <= f["clean_retaken"] <= 1


def test_the_floors_follow_verdict_flips_on_frames_the_anomaly_model_held_out(gated):
    m = json.loads((gated / MANIFEST).read_text())
    q = m["rankers"]["quality"]
    flips = q["calibration"]["verdict_flips"]
    with np.load(gated / q["calibration_frames"]) as kept:  # hashed with the bundle, for audit and recalibration
        assert q["calibration_frames"] in m["files"] and len(kept["z"]) == len(kept["scores"]) == flips["frames"]
    assert q["calibration"]["method"].startswith("verdict flips")
    # the anomaly bundle's own held-out images (tiny recipe: 6 of 30) and a synthetic defect on each,
    # clean and at two strengths of each of the ten kinds
    assert flips["clean_frames"] == 12 and flips["frames"] == 12 * 21 and flips["defect_frames"] == 6 * 21
    chosen, floors = flips["with_rule"], flips["floors_only"]
    assert chosen["clean_retaken"] <= 0.02 and chosen["flipped_retaken"] >= floors["flipped_retaken"]
    gate = QualityGate.from_bundle(load_bundle(gated))
    assert gate.follows_verdicts and gate.ranker.guard.to_dict() == flips["rule"]


def test_a_mildly_degraded_frame_near_the_threshold_is_retaken_and_far_from_it_judged(gated):
    gate = QualityGate.from_bundle(load_bundle(gated))
    g = gate.ranker.guard
    if g.band == 0:
        pytest.skip("the calibration found no near-threshold flips to guard against on this tiny line")
    mild = min(g.margin, 1.0) / 2  # above every floor, below the guard's margin
    assert gate.retakes(mild, 0.0) and not gate.retakes(mild, 2 * g.band) and not gate.retakes(g.margin + 1, 0.0)
    assert gate.retakes(-0.1, 10 * g.band)  # below a floor: retaken wherever the score is


def test_a_gate_calibrated_on_clean_frames_only_still_loads_and_gates_by_its_floors(gated, tmp_path):
    dst = shutil.copytree(gated, tmp_path / "old")
    m = json.loads((dst / MANIFEST).read_text())
    del m["rankers"]["quality"]["calibration"]["verdict_flips"]
    m["manifest_sha256"] = manifest_digest(m)
    (dst / MANIFEST).write_text(json.dumps(m))
    gate = QualityGate.from_bundle(load_bundle(dst))
    assert not gate.follows_verdicts
    assert not gate.retakes(0.01, 0.0) and gate.retakes(-0.01, 100.0)


def test_choose_guard_retakes_the_near_threshold_flips_within_the_clean_budget():
    from device.ranker_input import VerdictGuard
    from training.rank.flips import choose_guard, guarded, outcome

    rng = np.random.default_rng(0)
    n = 400
    clean = np.r_[np.ones(n, bool), np.zeros(2 * n, bool)]
    quality = np.r_[rng.uniform(0.5, 5, n), rng.uniform(0.2, 1.5, n), rng.uniform(2, 5, n)]  # clean, mild, faint
    z = np.r_[rng.normal(-3, 1, n), rng.uniform(-0.4, 0.4, n), rng.normal(-3, 1, n)]
    flips = np.r_[np.zeros(n, bool), np.ones(n, bool), np.zeros(n, bool)]  # the mild ones near the threshold flip
    guard, o = choose_guard(quality, z, flips, clean, budget=0.02)
    assert o.flipped_retaken >= 0.95 and o.clean_retaken <= 0.02 and o.unflipped_retaken <= 0.05
    assert outcome(guarded(quality, z, guard), flips, clean) == o
    assert outcome(guarded(quality, z, None), flips, clean).flipped_retaken == 0  # no floor was crossed
    with pytest.raises(KenpinError, match="margin and band"):
        VerdictGuard(-1.0, 0.5)
