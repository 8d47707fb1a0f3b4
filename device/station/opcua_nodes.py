"""The station's OPC UA address space, from one table: what each variable holds and where it sits.

    Objects/Station                       ns=<urn:kenpin:station>;s=Station
      Name, LastVerdict, LastScore, …      ns=…;s=Station.<Name>
      Counters/Triggers, Ok, …             ns=…;s=Station.Counters.<Name>
      Health/Running, …                    ns=…;s=Station.Health.<Name>
      Inspect() → Verdict, Score, TriggerId
      SwitchProduct(Number) → ActiveProduct

String node ids are stable across restarts and versions, so a PLC program may hard-code them.
Every variable is read-only: changes go through the methods, which name who made them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from asyncua import Server, ua

from device.station.record import VerdictRecord

NAMESPACE = "urn:kenpin:station"
V = ua.VariantType
NAN = math.nan
COUNTER_WRAP = 2 ** 32  # counters are UInt32 and roll over like a PLC's (supported by every PLC)


@dataclass(frozen=True)
class Variable:
    """One variable: its path under Station, type, value before anything is known, and meaning."""

    path: str
    vtype: ua.VariantType
    initial: Any
    doc: str


VARIABLES = (
    Variable("Name", V.String, "", "the station's name (station.name)"),
    Variable("LastVerdict", V.String, "", "ok, defect or retake: the last recorded part; empty before the first"),
    Variable("LastScore", V.Double, NAN, "its normalized anomaly score (the calibrated threshold is 0.5)"),
    Variable("LastQuality", V.Double, NAN, "its capture-quality score; NaN without a quality model"),
    Variable("LastGrade", V.Double, NAN, "defects only: the share of rated parts it ranks above; NaN otherwise"),
    Variable("LastLatencyMs", V.Double, NAN, "its capture-to-verdict time in milliseconds"),
    Variable("LastTriggerId", V.UInt32, 0, "the trigger it answers; 0 for a free-run part"),
    Variable("LastBundleId", V.String, "", "the bundle that judged it"),
    Variable("BundleId", V.String, "", "the active bundle"),
    Variable("ActiveProduct", V.Int32, 0, "the active product's number; 0 when the station has no products"),
    Variable("Counters.Triggers", V.UInt32, 0, "parts inspected since start (wraps at 2^32)"),
    Variable("Counters.Ok", V.UInt32, 0, "ok verdicts since start"),
    Variable("Counters.Defect", V.UInt32, 0, "defect verdicts since start"),
    Variable("Counters.Retake", V.UInt32, 0, "retake verdicts since start"),
    Variable("Counters.TriggerErrors", V.UInt32, 0, "triggers refused or failed (no verdict) since start"),
    Variable("Counters.SkippedFrames", V.UInt32, 0, "free-run frames skipped while inference was busy"),
    Variable("Health.Healthy", V.Boolean, False, "running, camera connected, frames flowing and record not degraded"),
    Variable("Health.Running", V.Boolean, False, "the station is started"),
    Variable("Health.CameraConnected", V.Boolean, False, "the camera is connected"),
    Variable("Health.FramesFlowing", V.Boolean, False, "frames arrived recently (what the systemd watchdog is fed on)"),
    Variable("Health.RecordDegraded", V.Boolean, False, "the record cannot keep images (full disk, write errors)"),
)
FOLDERS = ("Counters", "Health")
COUNTERS = {"Triggers": "triggers", "Ok": "ok", "Defect": "defect", "Retake": "retake",
            "TriggerErrors": "trigger_errors", "SkippedFrames": "skipped_frames"}
INSPECT_OUT = (("Verdict", V.String, "ok, defect or retake"), ("Score", V.Double, "the normalized anomaly score"),
               ("TriggerId", V.UInt32, "the trigger this verdict answers"))
SWITCH_IN = (("Number", V.Int32, "the product to switch to"),)
SWITCH_OUT = (("ActiveProduct", V.Int32, "the product active from the next part on"),)


def node_id(idx: int, path: str) -> ua.NodeId:
    """``ns=idx;s=Station.<path>`` (``s=Station`` for the object itself)."""
    return ua.NodeId(f"Station.{path}" if path else "Station", idx)


def _arguments(spec: tuple[tuple[str, ua.VariantType, str], ...]) -> list[ua.Argument]:
    return [ua.Argument(Name=name, DataType=ua.NodeId(vtype.value), ValueRank=-1,
                        Description=ua.LocalizedText(doc)) for name, vtype, doc in spec]


async def build(server: Server, inspect: Any, switch_product: Any) -> int:
    """Add the Station object, its variables and methods; the namespace index."""
    idx = await server.register_namespace(NAMESPACE)
    station = await server.nodes.objects.add_object(node_id(idx, ""), ua.QualifiedName("Station", idx))
    parents = {"": station}
    for folder in FOLDERS:
        parents[folder] = await station.add_object(node_id(idx, folder), ua.QualifiedName(folder, idx))
    for var in VARIABLES:
        folder, _, name = var.path.rpartition(".")
        node = await parents[folder].add_variable(node_id(idx, var.path), ua.QualifiedName(name, idx),
                                                  ua.Variant(var.initial, var.vtype))
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(var.doc))))
    await station.add_method(node_id(idx, "Inspect"), ua.QualifiedName("Inspect", idx), inspect, [],
                             _arguments(INSPECT_OUT))
    await station.add_method(node_id(idx, "SwitchProduct"), ua.QualifiedName("SwitchProduct", idx), switch_product,
                             _arguments(SWITCH_IN), _arguments(SWITCH_OUT))
    return idx


def _number(x: float | None) -> float:
    return NAN if x is None else float(x)


def verdict_values(rec: VerdictRecord) -> dict[str, Any]:
    """The Last* variables for one recorded part."""
    return {"LastVerdict": rec.verdict, "LastScore": float(rec.score), "LastQuality": _number(rec.quality),
            "LastGrade": _number(rec.grade), "LastLatencyMs": float(rec.latency_ms),
            "LastTriggerId": int(rec.trigger_id or 0) % COUNTER_WRAP, "LastBundleId": rec.bundle_id}


def counter_values(counters: dict[str, int]) -> dict[str, Any]:
    """The Counters.* variables from ``Counters.counts()``."""
    return {f"Counters.{name}": int(counters.get(key, 0)) % COUNTER_WRAP for name, key in COUNTERS.items()}


def health_values(status: dict[str, Any]) -> dict[str, Any]:
    """The Health.* variables and BundleId from ``Station.status()``."""
    cam = status.get("camera", {})
    running, connected = bool(status.get("running")), bool(cam.get("connected"))
    flowing, degraded = bool(cam.get("frames_flowing")), bool(status.get("store", {}).get("degraded"))
    bundle = status.get("bundle") or {}
    return {"Health.Running": running, "Health.CameraConnected": connected, "Health.FramesFlowing": flowing,
            "Health.RecordDegraded": degraded, "Health.Healthy": running and connected and flowing and not degraded,
            "BundleId": str(bundle.get("id", ""))}


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class Values:
    """Writes variable values by path, only the ones that changed.

    Written straight into the address space (what ``Server.write_attribute_value`` ends in, minus
    its layers): this runs for every verdict, on a station whose CPU the inspection needs.
    Subscribers still get their data changes: the address space notifies them.
    """

    def __init__(self, server: Server, idx: int) -> None:
        self._aspace = server.iserver.aspace
        self._vars = {v.path: (node_id(idx, v.path), v.vtype) for v in VARIABLES}
        self._last: dict[str, Any] = {}

    async def write(self, values: dict[str, Any], source_time: float | None = None) -> None:
        """Write each changed value; ``source_time`` (unix s) stamps when the value arose (a part's capture)."""
        now = datetime.now(timezone.utc)
        stamp = datetime.fromtimestamp(source_time, timezone.utc) if source_time is not None else now
        for path, value in values.items():
            if path in self._last and _same(self._last[path], value):
                continue
            self._last[path] = value
            nid, vtype = self._vars[path]
            dv = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp, ServerTimestamp=now)
            await self._aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)
