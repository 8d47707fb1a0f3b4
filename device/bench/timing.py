"""Side-by-side per-image latency: every method runs on the same frame before the next frame,
in rotating order, so a noisy shared machine slows them all alike."""
from __future__ import annotations

import time
from collections.abc import Callable

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
