"""Shared fixtures: a tiny generated line and a bundle trained on it (built once per session)."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kenpin.bench_inputs import tiny_line_spec, tiny_recipe  # noqa: F401 (tests import them from here)

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# A folder written by build_prebuilt() (where torch is): the tiny line and bundles are copied from
# it instead of generated and trained, so the station's tests run where there is no torch (the
# Pi; scripts/arm64_check.sh).
PREBUILT = os.environ.get("KENPIN_TEST_PREBUILT")


def build_prebuilt(out: Path) -> None:
    """The tiny line and bundle for KENPIN_TEST_PREBUILT (needs torch)."""
    from export.build import build_bundle
    from training.synthetic_line import generate_line

    build_bundle(generate_line(out / "line", tiny_line_spec()), out / "tiny", tiny_recipe())


def _prebuilt(name: str, tmp_path_factory) -> Path:
    """A copy of a prebuilt folder, so tests that alter it leave the original alone."""
    src = Path(PREBUILT) / name
    if not src.is_dir():
        pytest.skip(f"{src} is not in KENPIN_TEST_PREBUILT")
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("prebuilt") / name))


@pytest.fixture(scope="session")
def tiny_line(tmp_path_factory) -> Path:
    if PREBUILT:
        return _prebuilt("line", tmp_path_factory)
    from training.synthetic_line import generate_line

    return generate_line(tmp_path_factory.mktemp("line"), tiny_line_spec())


@pytest.fixture(scope="session")
def tiny_bundle(tiny_line, tmp_path_factory) -> Path:
    if PREBUILT:
        return _prebuilt("tiny", tmp_path_factory)
    from export.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(tiny_line, out, tiny_recipe())
    return out


@pytest.fixture(scope="session")
def tiny_texture_bundle(tiny_line, tmp_path_factory) -> Path:
    """The tiny bundle with the texture model fused into the image score (recipe scoring.texture)."""
    if PREBUILT:
        return _prebuilt("tiny_texture", tmp_path_factory)
    from export.build import build_bundle
    from training.recipe import ScoringSpec

    out = tmp_path_factory.mktemp("bundles") / "tiny_texture"
    build_bundle(tiny_line, out, replace(tiny_recipe(), scoring=ScoringSpec(texture=True)))
    return out


def dataset(name: str) -> Path:
    """A real dataset from ../shared, or skip the test where it is absent."""
    path = SHARED / name
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"{path} not present (real-data test)")
    return path


# CI counts a skip as a failure unless what is missing is hardware. CI (.ci/run, CI=true) runs
# scripts/setup.sh, which installs every package the tests use, so there a skip means a test that
# silently did not run. Only what no CI machine can have may skip: a skip reason naming one of
# these, or a realdata test without ../shared/datasets.
HARDWARE_SKIP_REASONS = ("GPU", "CUDA", "Pi camera", "picamera2", "GPIO pins", "needs root", "not root")
_skips_failing_ci: list[tuple[str, str]] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason pytest recorded for a skip (its longrepr is (path, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _hardware_is_missing(report: pytest.CollectReport | pytest.TestReport) -> bool:
    reason = _skip_reason(report)
    return any(phrase in reason for phrase in HARDWARE_SKIP_REASONS) or "realdata" in getattr(report, "keywords", {})


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail") and not _hardware_is_missing(report):
        _skips_failing_ci.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)  # a module-level importorskip skips the whole file at collection


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _skips_failing_ci and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _skips_failing_ci:
        terminalreporter.section("skips that fail CI (only missing hardware may skip there)", red=True)
        for nodeid, reason in _skips_failing_ci:
            terminalreporter.line(f"{nodeid}: {reason}")
