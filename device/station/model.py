"""What the station inspects and with what: a captured frame (:class:`Job`), the loaded bundle that
judges it (:class:`Model`) and the judgement waiting to be recorded (:class:`Decision`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle import Bundle
from device.quality import QualityGate
from device.runtime import Inspector
from device.selfcheck import SelfCheck
from device.station.product_settings import Product
from device.station.record import VerdictRecord


@dataclass
class Job:
    """A frame to inspect and what asked for it."""

    frame: np.ndarray
    captured: float  # unix seconds
    t0: float  # perf_counter at capture (latency origin)
    source: str
    trigger_id: int | None
    model: "Model | None" = None  # the product's model bound to this part (a swap or switch applies to the next)
    product: Product | None = None  # the Product bound to this part: its number, threshold and pulse
    tensor: np.ndarray | None = None  # preprocessed (capture stage)
    patches: np.ndarray | None = None  # embedded (embed stage)
    seq: int = -1  # capture order, for the in-order hand-off of parallel workers
    full: np.ndarray | None = None  # the same frame at full size, from a camera that has one (picamera2's main)
    frames: int = 1  # camera frames taken for this part (a burst's N; ``frame`` is the best of them)
    # the quality gate's (quality, limiting family) of ``frame``, when the capture stage ran it (it
    # always does where the bundle has a gate: to choose a burst's best, to skip a free-run frame,
    # or on the sensor's raw stream); None: judged without a gate
    assessed: tuple[float, str] | None = None

    @property
    def kept_image(self) -> np.ndarray:
        """The image the record keeps of this part: full size where the camera gave one, else the analysed frame."""
        return self.frame if self.full is None else self.full


@dataclass
class Decision:
    """Inference's output, waiting to be recorded."""

    job: Job
    record: VerdictRecord
    heatmap: np.ndarray | None


class Model:
    """One loaded bundle, proven on this CPU: the variant its self-check chose, with the bundle's
    quality gate and grade where it has them. Judging is :meth:`Inspector.judge`; the stages below
    only split the model's run off so that it overlaps the previous frame's search."""

    def __init__(self, bundle: Bundle, check: SelfCheck, threads: int) -> None:
        self.bundle = bundle
        self.check = check
        self.inspector = Inspector(bundle, check.variant, threads, rankers=True)

    @property
    def precision(self) -> str:
        """The variant that runs (``int8-w8``, ``int8-w7``, ``fp32``; ``int8`` in older bundles)."""
        return self.check.chosen

    def summary(self) -> dict[str, Any]:
        """The manifest facts an operator asks about, and what the self-check found on this CPU."""
        m = self.bundle.manifest
        v = m["variants"][self.precision]
        return {"id": self.bundle.bundle_id, "path": str(self.bundle.root), "created": m.get("created_utc"),
                "dataset": m.get("dataset") or m.get("recipe", {}).get("dataset"), "precision": self.precision,
                "verified_on_this_cpu": self.check.verified, "self_check": self.check.summary(),
                "self_check_seconds": round(self.check.seconds, 2),
                "input": [self.bundle.preprocess.width, self.bundle.preprocess.height],
                "quality_gate": self.inspector.gate is not None, "grade": self.inspector.grader is not None,
                "figures": {"calibration": v.get("calibration"), "evaluation": v.get("evaluation")}}

    @property
    def gate(self) -> QualityGate | None:
        """The bundle's capture-quality gate (None: the bundle has none)."""
        return self.inspector.gate

    def prepare(self, job: Job) -> None:
        """Capture stage: the model's input tensor."""
        job.tensor = self.inspector.preprocess(job.frame)

    def embed(self, job: Job) -> None:
        """Embed stage: ONNX Runtime only, so the model runs back to back."""
        job.patches = self.inspector.run(job.tensor)
        job.tensor = None

    def decide(self, job: Job, threshold: float, station: str, product: int = 0) -> Decision:
        """Score stage: the judgement of the embedded frame (embedded here when not pipelined) against
        ``threshold``, recorded as product number ``product``."""
        v = self.inspector.judge(job.frame, job.patches, threshold, t0=job.t0, assessed=job.assessed)
        rec = VerdictRecord(job.captured, station, self.bundle.bundle_id, v.verdict, v.score, threshold, v.raw_score,
                            v.raw_threshold, v.quality, v.latency_ms, job.source, job.trigger_id, grade=v.grade,
                            retake_reason=v.retake_reason, product=product, frames=job.frames)
        return Decision(job, rec, v.heatmap)
