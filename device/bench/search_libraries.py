"""``kenpin bench search``: the station's exact nearest-neighbour search beside well-kept libraries'.

    kenpin bench search --bundle BUNDLE --data DATASET_DIR

The same patches (the bundle's int8 embeddings of every 10th test image) against the same bank,
one thread each, side by side (:mod:`device.bench.timing`): the station's one-GEMM search
(``NearestNeighbourScorer``) and, where installed, faiss-cpu's ``IndexFlatL2`` and usearch's exact
search. A library row is only worth adopting if it is faster here *and* returns the same
distances (its largest difference is printed relative to the largest distance).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from device.bench.timing import time_side_by_side
from device.images import list_images, read_rgb
from device.runtime import Inspector
from device.scoring import NearestNeighbourScorer

Search = Callable[[np.ndarray], np.ndarray]
LIBRARIES = ("faiss-cpu", "usearch")


def _faiss(bank: np.ndarray) -> Search:
    import faiss  # optional: pip install faiss-cpu

    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    return lambda p: np.sqrt(np.maximum(index.search(p, 1)[0][:, 0], 0.0))


def _usearch(bank: np.ndarray) -> Search:
    from usearch.index import MetricKind, search  # optional: pip install usearch

    return lambda p: np.sqrt(np.maximum(search(bank, p, 1, MetricKind.L2sq, exact=True, threads=1).distances[:, 0], 0.0))


def searches(bank: np.ndarray) -> tuple[dict[str, Search], list[str]]:
    """(name → exact search over ``bank`` returning each patch's nearest distance, libraries not installed)."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    found: dict[str, Search] = {"station (numpy GEMM)": NearestNeighbourScorer(bank).distances}
    missing = []
    for name, make in zip(LIBRARIES, (_faiss, _usearch)):
        try:
            found[name] = make(bank)
        except ImportError:
            missing.append(name)
    return found, missing


def largest_difference(search: Search, reference: Search, patches: list[np.ndarray]) -> float:
    """Largest |distance - reference distance| over ``patches``, relative to the largest reference distance."""
    diff = top = 0.0
    for p in patches:
        ref = reference(p)
        diff, top = max(diff, float(np.abs(search(p) - ref).max())), max(top, float(ref.max()))
    return diff / max(top, 1e-12)


def run_search_bench(bundle: Path, data: Path, repeat: int = 3) -> int:
    """Print each search's median ms per frame on one thread and its difference from the station's; exit 0."""
    insp = Inspector.open(bundle, "int8", threads=1)
    paths = [p for d in sorted((data / "test").iterdir()) if d.is_dir() for p in list_images(d)]
    patches = [insp.embed(read_rgb(p)) for p in paths[::10][:40]]
    found, missing = searches(np.load(insp.variant.bank))
    station = found["station (numpy GEMM)"]
    with threadpool_limits(1):
        res = time_side_by_side(found, patches * repeat)
    n, c = patches[0].shape
    print(f"{n} patches x {insp.scorer.size} bank rows x {c} dims, one thread")
    for name, v in res.items():
        print(f"{name:22s} {v['median_ms']:7.2f} ms   largest difference {largest_difference(found[name], station, patches):.1e}")
    for name in missing:
        print(f"{name:22s} not installed (pip install {name})")
    return 0
