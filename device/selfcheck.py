"""The station proves its bundle on its own CPU before it judges a part.

onnxruntime picks its int8 kernels by instruction set (AVX2, AVX-512 VNNI, Arm with and without
dot product), so an int8 model validated where it was exported can score differently where it
runs. The bundle carries probe images with every variant's scores there; here, each variant
scores them again and is judged by the export's own parity rule against the fp32 reference:

1. fp32 must reproduce its recorded scores (1e-4 relative), or the runtime is not the one the
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
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

FP32_RTOL = 1e-4  # fp32 must reproduce its recorded scores this closely (relative)
TIMED_FRAMES = 3  # probes timed per variant to rank them by speed
SAME_SPEED = 1.15  # int8 variants within this factor of the fastest count as equally fast: a few frames'
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
    """The machine and the instruction-set features int8 kernels depend on."""
    machine = platform.machine()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return machine
    wanted = ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "asimddp", "i8mm", "asimd")
    flags = set(text.split())
    return machine + "".join(f" {f}" for f in wanted if f in flags)


def _scores(insp: Inspector, frames: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Raw image scores of ``frames`` through the judging path, and the mean ms per frame."""
    t0 = time.perf_counter()
    raw = np.array([insp.judge(f, heat="never").raw_score for f in frames], np.float64)
    return raw, (time.perf_counter() - t0) * 1000.0 / max(len(frames), 1)


def _fp32_reproduces(insp: Inspector, probes: Probes, n: int) -> tuple[int, float]:
    """Score the first ``n`` good and defect probes with fp32; BundleError if they differ from the record."""
    rec = insp.variant.probe_scores
    assert rec is not None
    frames = probes.good[:n] + probes.defect[:n]
    expected = np.r_[rec.good[:n], rec.defect[:n]]
    got, ms = _scores(insp, frames)
    worst = int(np.argmax(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-12)))
    if abs(got[worst] - expected[worst]) > FP32_RTOL * max(abs(expected[worst]), 1e-12):
        raise BundleError(f"{insp.variant.model}: fp32 scores a probe {got[worst]:.6g} where the bundle recorded "
                          f"{expected[worst]:.6g} (more than {FP32_RTOL:g} apart): this runtime differs from the one "
                          "the bundle was built for; re-export it with this kenpin and onnxruntime")
    return len(frames), ms


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
    raw, _ = _scores(insp, probes.all)
    good = raw[: len(probes.good)]
    norm = recalibrate(v, good, rules.target_frr)
    p = compare(v.name, fp32_norm(ref), norm(raw))
    ok = p.passes(rules.min_spearman, rules.max_mean_abs_diff)
    check = VariantCheck(v.name, "passed" if ok else "failed",
                         "" if ok else f"needs spearman ≥ {rules.min_spearman}, mean |Δ| ≤ {rules.max_mean_abs_diff}",
                         ms, p.spearman, p.mean_abs_diff, p.verdict_agreement, norm.threshold,
                         v.normalization.threshold, float(np.mean(good > norm.threshold)))
    return check, dataclasses.replace(v, normalization=norm)


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
    pr, rules = bundle.probes, _Rules.of(bundle)
    probes = read_probes(pr.path, pr.n_good, pr.n_defect, (bundle.preprocess.width, bundle.preprocess.height))
    fp32 = bundle.variant("fp32")
    f32 = Inspector(bundle, fp32, threads)
    runs, ms32 = _fp32_reproduces(f32, probes, len(probes.all) if full else 2)
    checks = {"fp32": VariantCheck("fp32", "reference", "", ms32, 1.0, 0.0, 1.0, fp32.normalization.threshold,
                                   fp32.normalization.threshold)}
    assert fp32.probe_scores is not None
    ref = np.r_[fp32.probe_scores.good, fp32.probe_scores.defect]
    timed: list[tuple[float, Inspector]] = []
    for v in bundle.int8_variants() if want != "fp32" else []:
        insp, why = _open(bundle, v, threads)
        if insp is None:
            checks[v.name] = VariantCheck(v.name, "skipped", why)
            continue
        timed.append((_scores(insp, probes.good[:TIMED_FRAMES])[1], insp))
        runs += TIMED_FRAMES
    chosen, checked = fp32, {"fp32": fp32}
    fastest = min((ms for ms, _ in timed), default=0.0)
    for ms, insp in sorted(timed, key=lambda t: t[0] > SAME_SPEED * fastest):  # stable: export's choice first
        if not full and (chosen is not fp32 or want == "auto" and ms32 <= ms):
            checks[insp.variant.name] = VariantCheck(insp.variant.name, "not checked",
                                                     f"{chosen.name} runs faster here", ms)
            continue
        check, recalibrated = _check_int8(insp, probes, ref, fp32.normalization, rules, ms)
        runs += len(probes.all)
        checks[check.variant] = check
        checked[check.variant] = recalibrated
        if check.status == "passed" and chosen is fp32 and (want == "int8" or ms < ms32):
            chosen = recalibrated
    result = SelfCheck(True, chosen.name, chosen, tuple(checks.values()), time.perf_counter() - t0, runs, cpu_kind(),
                       checked)
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
    check = self_check(bundle, threads, full=True)
    if not check.verified:
        return Inspector(bundle, want, threads), check
    if want not in check.checked:
        why = next((c.reason for c in check.checks if c.variant == want), f"it has {sorted(bundle.variants)}")
        raise BundleError(f"{bundle.root}: variant {want!r} cannot run on this CPU ({why})")
    return Inspector(bundle, check.checked[want], threads), check


def startup_estimate(bundle: Bundle, check: SelfCheck, board: str = "Raspberry Pi 4") -> float | None:
    """An ESTIMATE of the start-up check's seconds on ``board``: its model runs at the board's
    published rate for the manifest's MAC count (None without the count)."""
    gmacs = bundle.manifest.get("model_gmacs")
    return check.model_runs * pi_model_ms(float(gmacs), board) / 1000.0 if gmacs else None
