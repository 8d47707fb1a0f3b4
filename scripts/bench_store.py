#!/usr/bin/env python3
"""How many verdicts per second the station's record keeps up with (each committed durably).

    .venv/bin/python scripts/bench_store.py --n 1000 --size 224

Two cases at the given frame size: the usual line (ok parts, 1 % of their images kept) and the
worst case (every part a defect: frame + heat-map overlay JPEGs of noise, the slowest to encode),
each committed one by one (``record``) and in groups of 8 (``record_many``, one fsync per group). The data
folder is a temporary one beside --dir (default: the current folder's disk, not /tmp's tmpfs).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device.station.record import VerdictRecord  # noqa: E402
from device.station.store import VerdictStore  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dir", type=Path, default=Path("."))
    a = ap.parse_args()
    out, cpu = {}, {}
    for case, verdict, group in (("ok_1pct_images", "ok", 1), ("all_defect_images", "defect", 1),
                                 ("ok_group_commit_8", "ok", 8), ("all_defect_group_commit_8", "defect", 8)):
        with tempfile.TemporaryDirectory(dir=a.dir, prefix="bench-store-") as d:
            wall, ms = rate(Path(d), a.n, a.size, verdict, group)
            out[case], cpu[case] = round(wall, 1), round(ms, 2)
    print(json.dumps({"verdicts_per_s": out, "cpu_ms_per_verdict": cpu, "n": a.n, "size": a.size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
