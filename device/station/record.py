"""The verdict record (DESIGN.md): one row per inspected part, the contract between the
pipeline that writes it, the store that keeps it, and the dashboard, metrics and MQTT that read it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

VERDICTS = ("ok", "defect", "retake")
# free-run: the capture loop; software: the dashboard/HTTP; gpio: a part-present sensor;
# modbus / opcua: the line's PLC over its protocol server
TRIGGER_SOURCES = ("free-run", "software", "gpio", "modbus", "opcua")


@dataclass(frozen=True)
class VerdictRecord:
    """One inspected part.

    ``score``/``threshold`` are the operator-facing normalized values (threshold at 0.5);
    ``raw_*`` are the bundle's distances, kept for audit. ``frame_ref``/``heatmap_ref`` are paths
    relative to the station's image folder (None when the image was not kept: sampled-out ok
    parts, or recording degraded by a full disk). ``id`` is assigned by the store.
    """

    time: float  # unix seconds (UTC) when the frame was captured
    station: str
    bundle_id: str
    verdict: str  # one of VERDICTS
    score: float
    threshold: float
    raw_score: float
    raw_threshold: float
    quality: float | None  # capture-quality score (RankNet gate), None without a quality model
    latency_ms: float  # capture → verdict
    trigger_source: str  # one of TRIGGER_SOURCES
    trigger_id: int | None = None  # the trigger this verdict answers (triggered modes)
    frame_ref: str | None = None
    heatmap_ref: str | None = None
    # defects only, with a grade model in the bundle: the share (0–1) of the operator-rated parts
    # this one ranks above (a severity in the operators' own order); None otherwise
    grade: float | None = None
    # retakes only: the capture-quality family below its floor (sharpness, dark, noise…)
    retake_reason: str | None = None
    # the product this part was judged as (its trigger's, or free-run's at capture); 0 for a station
    # without ``products:`` and for rows recorded before products existed
    product: int = 0
    # camera frames taken for this part: trigger.burst's N (the best of them by the quality gate was
    # judged), 1 for a single frame and for rows recorded before bursts existed
    frames: int = 1
    id: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if self.trigger_source not in TRIGGER_SOURCES:
            raise ValueError(f"trigger_source {self.trigger_source!r} is not one of {TRIGGER_SOURCES}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the dashboard API, SSE events and MQTT payloads use this)."""
        return asdict(self)
