"""``kenpin bench store``: how many verdicts per second the station's record keeps up with (each committed durably).

    kenpin bench store --n 1000 --size 224

Two cases at the given frame size: the usual line (ok parts, 1 % of their images kept) and the
worst case (every part a defect: frame + heat-map overlay JPEGs of noise, the slowest to encode),
each committed one by one (``record``) and in groups of 8 (``record_many``, one fsync per group). The data
folder is a temporary one beside ``folder`` (default: the current folder's disk, not /tmp's tmpfs).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from device.station.record import VerdictRecord
from device.station.store import VerdictStore

CASES = (("ok_1pct_images", "ok", 1), ("all_defect_images", "defect", 1),
         ("ok_group_commit_8", "ok", 8), ("all_defect_group_commit_8", "defect", 8))


def rate(data: Path, n: int, size: int, verdict: str, group: int = 1) -> tuple[float, float]:
    """(verdicts per second of wall time, CPU milliseconds per verdict): the CPU figure holds on a
    busy machine, the wall figure includes waiting for the disk's sync."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    heat = rng.random((size, size)).astype(np.float32)
    with VerdictStore(data, ok_image_fraction=0.01) as store:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, group):
            recs = [VerdictRecord(time=time.time(), station="bench", bundle_id="b", verdict=verdict, score=0.3,
                                  threshold=0.5, raw_score=1.0, raw_threshold=2.0, quality=None, latency_ms=5.0,
                                  trigger_source="free-run", trigger_id=j) for j in range(i, min(n, i + group))]
            store.record_many([(r, frame, heat) for r in recs])
        return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / n


def run_store_bench(n: int = 1000, size: int = 224, folder: Path = Path(".")) -> int:
    """Print the four cases' rates as one JSON line; exit 0."""
    out, cpu = {}, {}
    for case, verdict, group in CASES:
        with tempfile.TemporaryDirectory(dir=folder, prefix="bench-store-") as d:
            wall, ms = rate(Path(d), n, size, verdict, group)
            out[case], cpu[case] = round(wall, 1), round(ms, 2)
    print(json.dumps({"verdicts_per_s": out, "cpu_ms_per_verdict": cpu, "n": n, "size": size}))
    return 0
