"""Side-by-side per-image latency: every method runs on the same frame before the next frame,
in rotating order, so a noisy shared machine slows them all alike; and the CPU of named threads."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def time_side_by_side(methods: dict[str, Callable[[np.ndarray], object]], frames: list[np.ndarray],
                      warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / p90 milliseconds per call of each method over ``frames``."""
    names = list(methods)
    for frame in frames[:warmup]:
        for n in names:
            methods[n](frame)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i, frame in enumerate(frames):
        for n in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            methods[n](frame)
            samples[n].append((time.perf_counter() - t0) * 1000.0)
    return {n: {"median_ms": float(np.median(s)), "p90_ms": float(np.percentile(s, 90))} for n, s in samples.items()}


def thread_cpu(prefixes: tuple[str, ...]) -> tuple[float, float]:
    """CPU seconds so far of (this process's threads whose names start with one of ``prefixes``,
    every other thread of it), from /proc: what one part of a process costs beside the rest."""
    tick = os.sysconf("SC_CLK_TCK")
    ids = {t.native_id for t in threading.enumerate() if t.name.startswith(prefixes)}
    mine = other = 0.0
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if int(task.name) in ids:
            mine += cpu
        else:
            other += cpu
    return mine, other
