"""The station proves its bundle on its own CPU before it judges a part.

onnxruntime picks its int8 kernels by instruction set (AVX2, AVX-512 VNNI, Arm with and without
dot product), so an int8 model validated where it was exported can score differently where it
runs. The bundle carries probe images with every variant's scores there; here, each variant
scores them again and is judged by the export's own parity rule against the fp32 reference:

1. fp32 must reproduce its recorded scores (2e-3 relative), or the runtime is not the one the
   bundle was built for and the bundle is refused.
2. Each int8 variant that this CPU can run scores the probes; its threshold is recalibrated here
   from the good probes with the export's quantile rule (``device.calibrate``): the export's
   threshold moves by as much as that rule's threshold on the good probes moved between the
   exporting CPU and this one. On the exporting CPU it is the validated threshold, exactly.
3. The fastest variant that passes the recipe's tolerance runs; fp32 if none does.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.bundle import Bundle, Variant, load_bundle
from device.calibrate import calibrate
from device.errors import BundleError
from device.macs import pi_model_ms
from device.parity import compare
from device.probes import Probes, read_probes
from device.runtime import Inspector
from device.scoring import Normalization

log = logging.getLogger("kenpin.selfcheck")

# fp32 must reproduce its recorded scores this closely (relative; see _fp32_reproduces). Not tighter:
# fp32 kernels sum in another order on another instruction set, and a texture-fused score carries
# it through a Mahalanobis distance (3.6e-4 measured, AVX-512 export on an emulated AVX2 Haswell);
# still 40x below the int8 variants' parity rule (mean |Δ| 0.08 normalized).
FP32_RTOL = 2e-3
TIMED_FRAMES = 5  # probes timed per variant to rank them by speed
FP32_PROBES = 2  # good and defect probes fp32 must reproduce at start-up (all of them in a full check)
SAME_SPEED = 1.25  # int8 variants within this factor of the fastest count as equally fast: a few frames'
                   # timing cannot tell them apart, so the export's own choice goes first among them
CHOICES = ("auto", "int8", "fp32")  # what a station may ask for: the fastest passing, int8 only, fp32


@dataclass(frozen=True)
class VariantCheck:
    """One variant's figures on this CPU."""

    variant: str
    status: str  # reference (fp32) | passed | failed | skipped (cannot run here) | not checked
    reason: str = ""
    ms_per_frame: float | None = None
    spearman: float | None = None
    mean_abs_diff: float | None = None
    verdict_agreement: float | None = None
    threshold: float | None = None  # recalibrated raw threshold on this CPU
    export_threshold: float | None = None
    probe_false_reject_rate: float | None = None  # good probes over the recalibrated threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SelfCheck:
    """What the check found and which variant runs (``variant``: recalibrated for this CPU)."""

    verified: bool  # False: a bundle without probes, run on the export's word
    chosen: str
    variant: Variant
    checks: tuple[VariantCheck, ...]
    seconds: float
    model_runs: int
    cpu: str
    checked: dict[str, Variant] = dataclasses.field(default_factory=dict)  # every checked variant, recalibrated

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (audit trail, dashboard, ``kenpin verify --json``)."""
        return {"verified": self.verified, "chosen": self.chosen, "seconds": round(self.seconds, 3),
                "model_runs": self.model_runs, "cpu": self.cpu, "threshold": self.variant.normalization.threshold,
                "checks": [c.to_dict() for c in self.checks]}

    def summary(self) -> str:
        """The log line."""
        if not self.verified:
            return (f"bundle NOT verified on this CPU ({self.cpu}): it has no probe set (exported before the "
                    f"station's own check); running its export-time choice {self.chosen}")
        figures = "; ".join(f"{c.variant} {c.status}" + (f" (ρ {c.spearman:.3f}, mean |Δ| {c.mean_abs_diff:.3f})"
                                                         if c.spearman is not None else "")
                            + (f" {c.ms_per_frame:.1f} ms" if c.ms_per_frame is not None else "") for c in self.checks)
        return f"self-check on {self.cpu}: running {self.chosen} ({figures}; {self.seconds:.1f} s)"


def cpu_kind() -> str:
    """The machine and the instruction-set features int8 kernels depend on, as the CPU itself
    reports them (numpy's runtime dispatch reads cpuid / HWCAP, so an emulated CPU shows as itself)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
    wanted = ("AVX512VNNI", "AVX512F", "AVX2", "ASIMDDP", "ASIMD")
    return platform.machine() + "".join(f" {f.lower()}" for f in wanted if features.get(f))


def _scores(insp: Inspector, frames: list[np.ndarray]) -> np.ndarray:
    """Raw image scores of ``frames`` through the judging path."""
    return np.array([insp.judge(f, heat="never").raw_score for f in frames], np.float64)


def _fp32_reproduces(insp: Inspector, probes: Probes, n: int) -> int:
    """Score the first ``n`` good and defect probes with fp32; BundleError if they differ from the record."""
    rec = insp.variant.probe_scores
    assert rec is not None
    frames = probes.good[:n] + probes.defect[:n]
    expected = np.r_[rec.good[:n], rec.defect[:n]]
    got = _scores(insp, frames)
    # Relative to the score, but never to less than the spread of good scores: a texture-fused score
    # is a z-score that can sit at 0 (a probe at -0.00045 moved by 1.5e-6 on an emulated Cortex-A72).
    unit = np.maximum(np.abs(expected), insp.variant.normalization.scale)
    worst = int(np.argmax(np.abs(got - expected) / unit))
    if abs(got[worst] - expected[worst]) > FP32_RTOL * unit[worst]:
        raise BundleError(f"{insp.variant.model}: fp32 scores a probe {got[worst]:.6g} where the bundle recorded "
                          f"{expected[worst]:.6g} (more than {FP32_RTOL:g} apart): this runtime differs from the one "
                          "the bundle was built for; re-export it with this kenpin and onnxruntime")
    return len(frames)


def recalibrate(v: Variant, good_here: np.ndarray, target_frr: float) -> Normalization:
    """The variant's normalization on this CPU: the export's threshold and scale, moved by how far
    the quantile rule on the good probes moved between the exporting CPU and this one."""
    assert v.probe_scores is not None
    here, there = calibrate(good_here, target_frr), calibrate(v.probe_scores.good, target_frr)
    return Normalization(v.normalization.threshold + here.threshold - there.threshold,
                         v.normalization.scale * here.scale / there.scale)


@dataclass(frozen=True)
class _Rules:
    target_frr: float
    min_spearman: float
    max_mean_abs_diff: float

    @classmethod
    def of(cls, bundle: Bundle) -> "_Rules":
        tol = bundle.manifest.get("parity", {}).get("tolerance", {})
        return cls(float(bundle.manifest["calibration"]["target_false_reject_rate"]),
                   float(tol.get("min_spearman", 0.9)), float(tol.get("max_mean_abs_diff", 0.08)))


def _check_int8(insp: Inspector, probes: Probes, ref: np.ndarray, fp32_norm: Normalization, rules: _Rules,
                ms: float) -> tuple[VariantCheck, Variant]:
    """Score every probe with one int8 variant, recalibrate it, judge it against fp32."""
    v = insp.variant
    raw = _scores(insp, probes.all)
    good = raw[: len(probes.good)]
    norm = recalibrate(v, good, rules.target_frr)
    p = compare(v.name, fp32_norm(ref), norm(raw))
    ok = p.passes(rules.min_spearman, rules.max_mean_abs_diff)
    check = VariantCheck(v.name, "passed" if ok else "failed",
                         "" if ok else f"needs spearman ≥ {rules.min_spearman}, mean |Δ| ≤ {rules.max_mean_abs_diff}",
                         ms, p.spearman, p.mean_abs_diff, p.verdict_agreement, norm.threshold,
                         v.normalization.threshold, float(np.mean(good > norm.threshold)))
    return check, recalibrated(v, norm)


def recalibrated(v: Variant, norm: Normalization) -> Variant:
    """The variant at its threshold on this CPU; its held-out good scores move with the threshold,
    so other false-reject budgets (``Variant.threshold_at``) follow the same recalibration."""
    shift = norm.threshold - v.normalization.threshold
    held = None if v.holdout_scores is None else v.holdout_scores + shift
    return dataclasses.replace(v, normalization=norm, holdout_scores=held)


def _open(bundle: Bundle, v: Variant, threads: int) -> tuple[Inspector | None, str]:
    try:
        return Inspector(bundle, v, threads), ""
    except BundleError as e:  # e.g. an operator this CPU's onnxruntime build lacks
        return None, str(e)


def _unverified(bundle: Bundle, want: str, t0: float) -> SelfCheck:
    name = "fp32" if want == "fp32" or bundle.int8_default is None else bundle.int8_default
    log.warning("bundle %s could not be verified on this CPU: it has no probe set (exported before the "
                "station's own check); running its export-time choice %s", bundle.bundle_id, name)
    return SelfCheck(False, name, bundle.variant(name), (), time.perf_counter() - t0, 0, cpu_kind())


def _timed(sessions: list[Inspector], frames: list[np.ndarray]) -> list[float]:
    """Each session's fastest frame (ms), timed in turns so that whatever else runs on the CPU hits
    them alike; the minimum, because interference only ever adds time."""
    best = [math.inf] * len(sessions)
    for f in frames:
        for i, insp in enumerate(sessions):
            best[i] = min(best[i], insp.judge(f, heat="never").latency_ms)
    return best


def _choose(timed: list[tuple[float, Inspector]], ms32: float, want: str, full: bool,
            check_one: Callable[[Inspector, float], VariantCheck]) -> tuple[str | None, dict[str, VariantCheck]]:
    """Walk the int8 variants from the fastest; the first that passes (and, for ``auto``, beats fp32)
    is chosen. Variants within :data:`SAME_SPEED` of the fastest count as equally fast (the export's
    choice first among them); unless ``full``, the rest are not checked."""
    chosen, checks = None, {}
    fastest = min((ms for ms, _ in timed), default=0.0)
    for ms, insp in sorted(timed, key=lambda t: t[0] > SAME_SPEED * fastest):  # stable: export's choice first
        name = insp.variant.name
        slower_than_fp32 = want == "auto" and ms32 <= ms
        if not full and (chosen is not None or slower_than_fp32):
            why = f"{chosen} passed and runs as fast" if chosen else "fp32 runs as fast here"
            checks[name] = VariantCheck(name, "not checked", why, ms)
            continue
        checks[name] = check_one(insp, ms)
        if checks[name].status == "passed" and chosen is None and not slower_than_fp32:
            chosen = name
    return chosen, checks


def self_check(bundle: Bundle, threads: int = 1, want: str = "auto", full: bool = False) -> SelfCheck:
    """Prove ``bundle`` on this CPU and choose the variant to run.

    ``want``: ``auto`` (the fastest variant that passes, fp32 included), ``int8`` (the fastest
    passing int8 variant, fp32 if none passes) or ``fp32``. ``full``: check every variant on
    every probe (``kenpin verify``); otherwise stop at the first variant that decides the choice.
    """
    if want not in CHOICES:
        raise BundleError(f"precision {want!r}: choose one of {list(CHOICES)}")
    t0 = time.perf_counter()
    if bundle.probes is None:
        return _unverified(bundle, want, t0)
    pr, rules, fp32 = bundle.probes, _Rules.of(bundle), bundle.variant("fp32")
    probes = read_probes(pr.path, pr.n_good, pr.n_defect, (bundle.preprocess.width, bundle.preprocess.height))
    f32 = Inspector(bundle, fp32, threads)
    runs = _fp32_reproduces(f32, probes, len(probes.all) if full else FP32_PROBES)
    skipped, int8s = {}, []
    for v in bundle.int8_variants() if want != "fp32" else []:
        insp, why = _open(bundle, v, threads)
        if insp is None:
            skipped[v.name] = VariantCheck(v.name, "skipped", why)
        else:
            int8s.append(insp)
    ms = _timed([f32, *int8s], probes.good[:TIMED_FRAMES])
    runs += TIMED_FRAMES * (1 + len(int8s))
    assert fp32.probe_scores is not None
    ref = np.r_[fp32.probe_scores.good, fp32.probe_scores.defect]
    checked: dict[str, Variant] = {"fp32": fp32}

    def check_one(insp: Inspector, ms_here: float) -> VariantCheck:
        nonlocal runs
        check, checked[insp.variant.name] = _check_int8(insp, probes, ref, fp32.normalization, rules, ms_here)
        runs += len(probes.all)
        return check

    chosen, checks = _choose(list(zip(ms[1:], int8s)), ms[0], want, full, check_one)
    reference = VariantCheck("fp32", "reference", "", ms[0], 1.0, 0.0, 1.0, fp32.normalization.threshold,
                             fp32.normalization.threshold)
    result = SelfCheck(True, chosen or "fp32", checked[chosen or "fp32"], (reference, *checks.values(),
                       *skipped.values()), time.perf_counter() - t0, runs, cpu_kind(), checked)
    log.info("%s", result.summary())
    return result


def table(check: SelfCheck) -> str:
    """The per-variant table ``kenpin verify`` prints."""
    rows = [f"{'variant':<10} {'status':<12} {'ms/frame':>8} {'spearman':>8} {'mean|Δ|':>8} {'verdicts':>8} "
            f"{'threshold here':>14} {'at export':>10} {'probe FRR':>9}"]
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for c in check.checks:
        rows.append(f"{c.variant:<10} {c.status:<12} {fmt(c.ms_per_frame, '8.2f')} {fmt(c.spearman, '8.4f')} "
                    f"{fmt(c.mean_abs_diff, '8.4f')} {fmt(c.verdict_agreement, '8.3f')} {fmt(c.threshold, '14.5f')} "
                    f"{fmt(c.export_threshold, '10.5f')} {fmt(c.probe_false_reject_rate, '9.3f')}"
                    + (f"  {c.reason}" if c.reason else ""))
    return "\n".join(rows)


def open_checked(root: str | Path, want: str = "auto", threads: int = 2) -> tuple[Inspector, SelfCheck]:
    """A bundle's inspector for the variant the station would run here (``want`` as the station's
    ``bundle.precision``), or a named variant (``int8-w7``…) at its threshold recalibrated here."""
    bundle = load_bundle(root)
    if want in CHOICES:
        check = self_check(bundle, threads, want)
        return Inspector(bundle, check.variant, threads), check
    bundle.variant(want)  # an unknown name: one sentence listing the bundle's variants
    check = self_check(bundle, threads, full=True)
    if not check.verified:
        return Inspector(bundle, want, threads), check
    if want not in check.checked:
        why = next((c.reason for c in check.checks if c.variant == want), f"it has {sorted(bundle.variants)}")
        raise BundleError(f"{bundle.root}: variant {want!r} cannot run on this CPU ({why})")
    return Inspector(bundle, check.checked[want], threads), check


def startup_runs(n_good: int, n_defect: int, n_int8: int) -> int:
    """Model runs of the start-up check (``auto``) on its usual path, where the fastest int8
    variant passes: fp32 reproduces a few probes, every variant is timed, one scores them all."""
    return (min(FP32_PROBES, n_good) + min(FP32_PROBES, n_defect) + min(TIMED_FRAMES, n_good) * (1 + n_int8)
            + n_good + n_defect)


def startup_estimate(bundle: Bundle, check: SelfCheck, board: str = "Raspberry Pi 4") -> float | None:
    """An ESTIMATE of the start-up check's seconds on ``board``: its model runs at the board's
    published rate for the manifest's MAC count (None without the count)."""
    gmacs = bundle.manifest.get("model_gmacs")
    return check.model_runs * pi_model_ms(float(gmacs), board) / 1000.0 if gmacs else None
