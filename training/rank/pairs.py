"""Pairs for RankNet: (clean, degraded) pairs from good images, and pairs from operator files.

Operator files are CSV, paths relative to the file's folder, an optional header line:

    image,rating          one rated image per line; higher rating = ranked higher (ties allowed)
    better,worse          one judgement per line: the first image ranks above the second

Ratings become every pair of images with different ratings (target 1) and of equal ratings
(target ½, as the original RankNet treats ties). A file with problems is refused with one clear
error naming the file and line.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from device.errors import KenpinError
from device.images import read_rgb
from device.ranker_input import RankerInput
from training.rank.degrade import TRAIN_GRID, degrade, to_float, to_uint8

# (index a, index b, P(a above b), output column judging the pair) for one batch; one per step.
PairBatch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class QualityPool:
    """Model inputs of clean and degraded versions of good images, ready for pair sampling.

    Row r is ``group[r]``'s image, clean when ``kind[r] == -1``, else degraded with kind index
    ``kind[r]`` at ``level[r]`` (1 = mildest of that kind's training grid).
    """

    inputs: np.ndarray  # N x C x S x S float16 (float32 with a statistics plane)
    group: np.ndarray
    kind: np.ndarray
    level: np.ndarray
    kinds: tuple[str, ...]
    z: np.ndarray | None = None  # per row: the anomaly score's distance from the threshold (scale units), when judged


def build_quality_pool(images: list[np.ndarray], inp: RankerInput, kinds: tuple[str, ...], levels_per_kind: int,
                       uint8_share: float, seed: int, judge: Callable[[np.ndarray], float] | None = None) -> QualityPool:
    """For every image: the clean frame and ``levels_per_kind`` random training strengths of every kind.

    A share of images is rounded to 8 bits after degrading (what a camera delivers); the rest
    stays in float, so both the station's 8-bit path and a deeper sensor's path are learnt.
    ``judge``: the anomaly model (an 8-bit RGB frame → its score's distance from the threshold),
    run on every version for the verdict-flip calibration (``QualityPool.z``).
    """
    rng = np.random.default_rng(seed)
    # float16 halves the pool; a statistics vector needs float32 (σ = 0.001 moves its finest
    # band energy by ~0.004 in log units, below float16's resolution at those magnitudes)
    dtype = np.float32 if inp.stats else np.float16
    rows, group, kind, level, z = [], [], [], [], []
    for g, rgb in enumerate(tqdm(images, desc="degrading" if judge is None else "degrading and judging",
                                 unit="img", leave=False)):
        clean = to_float(rgb[..., 0] if rgb.ndim == 3 and np.array_equal(rgb[..., 0], rgb[..., 1]) else rgb)
        rounded = rng.random() < uint8_share
        versions = [(-1, 0, clean)]
        for k, name in enumerate(kinds):
            grid = TRAIN_GRID[name]
            for li in sorted(rng.choice(len(grid), size=min(levels_per_kind, len(grid)), replace=False)):
                versions.append((k, int(li) + 1, degrade(clean, name, grid[li], rng)))
        for k, li, img in versions:
            rows.append(inp(to_uint8(img) if rounded else img)[0].astype(dtype))
            group.append(g), kind.append(k), level.append(li)
            if judge is not None:
                z.append(judge(as_rgb8(img)))
    return QualityPool(np.stack(rows), np.array(group), np.array(kind), np.array(level), kinds,
                       np.array(z) if judge is not None else None)


def as_rgb8(img: np.ndarray) -> np.ndarray:
    """A float frame (gray or RGB, in [0, 1]) as the 8-bit RGB frame the anomaly model reads."""
    u8 = to_uint8(img)
    return np.repeat(u8[..., None], 3, axis=2) if u8.ndim == 2 else u8


def quality_pairs(pool: QualityPool, cross_share: float,
                  families: Sequence[Sequence[int]] | None = None) -> Callable[[np.random.Generator, int], PairBatch]:
    """Sampler of (better, worse) pairs from a :class:`QualityPool`, each judged by one output column.

    ``families[c]`` lists the kind indices output column ``c`` ranks (None: one column, every kind).
    Each pair first draws its column (families equally often), then mostly a pair of one image:
    clean vs a degradation of that family, or a milder vs a stronger step of the same kind.
    ``cross_share`` of pairs compare a clean image with another image degraded at least half-way
    up its grid, so scores are comparable across scenes and one floor can gate them.
    """
    families = [list(range(len(pool.kinds)))] if families is None else [list(f) for f in families]
    grid_len = np.array([len(TRAIN_GRID[k]) for k in pool.kinds])
    strong_rows = (pool.kind >= 0) & (pool.level * 2 > grid_len[np.maximum(pool.kind, 0)])
    clean = np.flatnonzero(pool.kind < 0)
    groups = np.unique(pool.group)
    # per column: each image's rows of that family (its clean row first), and the strong rows
    rows_of = [{int(g): np.flatnonzero((pool.group == g) & ((pool.kind < 0) | np.isin(pool.kind, f))) for g in groups}
               for f in families]
    strong = [np.flatnonzero(strong_rows & np.isin(pool.kind, f)) for f in families]

    def one_image(rng: np.random.Generator, rows: np.ndarray) -> tuple[int, int]:
        x, y = rng.choice(rows, 2, replace=False)
        kx, ky = pool.kind[x], pool.kind[y]
        if kx >= 0 and ky >= 0 and kx != ky:  # different kinds: no order known, use clean instead
            x, kx = rows[0], -1
        # order: clean first, else the milder of the same kind
        if ky < 0 or (kx >= 0 and pool.level[y] < pool.level[x]):
            x, y = y, x
        return int(x), int(y)

    def sample(rng: np.random.Generator, n: int) -> PairBatch:
        a, b = np.empty(n, int), np.empty(n, int)
        # (one column draws nothing: a single-score sampler gives the same pairs as before families)
        column = rng.integers(0, len(families), n) if len(families) > 1 else np.zeros(n, int)
        for i, c in enumerate(column):
            if rng.random() < cross_share and len(strong[c]):
                a[i], b[i] = rng.choice(clean), rng.choice(strong[c])
            else:
                a[i], b[i] = one_image(rng, rows_of[c][int(rng.choice(groups))])
        target = np.ones(n, np.float32)
        flip = rng.random(n) < 0.5  # both orders, so the net cannot learn a position
        a[flip], b[flip] = b[flip].copy(), a[flip].copy()
        target[flip] = 0.0
        return a, b, target, column

    return sample


@dataclass
class Judgements:
    """Images and pairwise judgements from an operator file: ``(i, j, P(i above j))``."""

    path: Path
    images: list[Path]
    pairs: list[tuple[int, int, float]]
    ratings: list[float] | None = None  # per image, for ``image,rating`` files


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise KenpinError(f"{path}: ratings file does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise KenpinError(f"{path}: not a text CSV file") from None
    rows = []
    for n, fields in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in fields]
        if not fields or all(not f for f in fields) or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise KenpinError(f"{path}:{n}: expected 2 comma-separated fields (image,rating or better,worse), got {len(fields)}")
        rows.append((n, fields))
    return rows


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def read_judgements(path: str | Path) -> Judgements:
    """Parse and validate an operator file (``image,rating`` or ``better,worse``); KenpinError names the line."""
    path = Path(path)
    rows = _rows(path)
    header = rows[0][1] if rows else []
    kind = None
    if [h.lower() for h in header] in (["image", "rating"], ["better", "worse"]):
        kind = header[0].lower()
        rows = rows[1:]
    if not rows:
        raise KenpinError(f"{path}: no judgements in the file; expected lines of image,rating or better,worse")
    kind = kind or ("image" if _is_number(rows[0][1][1]) else "better")
    return _read_ratings(path, rows) if kind == "image" else _read_pairs(path, rows)


def _image(path: Path, line: int, name: str) -> Path:
    p = Path(name) if Path(name).is_absolute() else path.parent / name
    if not name or not p.is_file():
        raise KenpinError(f"{path}:{line}: image {name!r} does not exist (paths are relative to the file's folder)")
    return p.resolve()


def _read_ratings(path: Path, rows: list[tuple[int, list[str]]]) -> Judgements:
    images, ratings, seen = [], [], {}
    for line, (name, value) in rows:
        img = _image(path, line, name)
        if not _is_number(value):
            raise KenpinError(f"{path}:{line}: rating {value!r} is not a number")
        if img in seen:
            raise KenpinError(f"{path}:{line}: image {name!r} is rated twice (also on line {seen[img]})")
        seen[img] = line
        images.append(img), ratings.append(float(value))
    if len(images) < 2:
        raise KenpinError(f"{path}: only one image is rated; ranking needs at least two")
    if len(set(ratings)) < 2:
        raise KenpinError(f"{path}: every image has the same rating; nothing to rank")
    r = np.asarray(ratings)
    i, j = np.triu_indices(len(r), 1)
    target = np.where(r[i] > r[j], 1.0, np.where(r[i] < r[j], 0.0, 0.5))
    return Judgements(path, images, list(zip(i.tolist(), j.tolist(), target.tolist())), ratings)


def _reaches(graph: dict[int, set[int]], start: int, goal: int) -> list[int] | None:
    """A path start → goal in ``graph`` (depth-first), or None."""
    stack, came = [start], {start: -1}
    while stack:
        u = stack.pop()
        if u == goal:
            path = [u]
            while came[path[-1]] != -1:
                path.append(came[path[-1]])
            return path[::-1]
        for v in graph[u]:
            if v not in came:
                came[v] = u
                stack.append(v)
    return None


def _read_pairs(path: Path, rows: list[tuple[int, list[str]]]) -> Judgements:
    index: dict[Path, int] = {}
    graph: dict[int, set[int]] = defaultdict(set)
    pairs = []
    for line, (better, worse) in rows:
        a, b = (index.setdefault(_image(path, line, n), len(index)) for n in (better, worse))
        if a == b:
            raise KenpinError(f"{path}:{line}: an image cannot rank above itself ({better!r})")
        cycle = _reaches(graph, b, a)
        if cycle is not None:
            names = {v: k.name for k, v in index.items()}
            loop = " > ".join(names[v] for v in [a, *cycle])
            raise KenpinError(f"{path}:{line}: this judgement closes a cycle ({loop}); the pairs contradict each other")
        graph[a].add(b)
        pairs.append((a, b, 1.0))
    return Judgements(path, list(index), pairs)


def judgement_pairs(pairs: list[tuple[int, int, float]], variants: int) -> Callable[[np.random.Generator, int], PairBatch]:
    """Sampler over judgement pairs; each image has ``variants`` rows (row = image * variants + v),
    e.g. flipped copies, drawn independently for the two sides."""
    arr = np.asarray(pairs, dtype=np.float64)

    def sample(rng: np.random.Generator, n: int) -> PairBatch:
        pick = arr[rng.integers(0, len(arr), n)]
        a = pick[:, 0].astype(int) * variants + rng.integers(0, variants, n)
        b = pick[:, 1].astype(int) * variants + rng.integers(0, variants, n)
        return a, b, pick[:, 2].astype(np.float32), np.zeros(n, int)

    return sample


def judged_inputs(images: list[Path], prepare: Callable[[np.ndarray], np.ndarray], inp: RankerInput) -> np.ndarray:
    """Model inputs (``prepare``: RGB frame → 1 x C x S x S) of judged images with their flips
    (4 rows per image: as is, h-, v-, both flipped; a statistics plane is never flipped, its
    values describe the whole image and do not change under a flip). An embedding input is a
    vector, not an image: the frame itself is flipped before the anomaly model embeds it."""
    rows = []
    for p in tqdm(images, desc="reading judged images", unit="img", leave=False):
        rgb = read_rgb(p)
        if inp.source == "embedding":
            rows += [prepare(np.ascontiguousarray(np.flip(rgb, flip)))[0] for flip in ((), (1,), (0,), (0, 1))]
            continue
        x = prepare(rgb)[0]
        n = inp.channels - int(inp.stats)
        for flip in ((), (2,), (1,), (1, 2)):
            y = x.copy()
            y[:n] = np.flip(x[:n], flip)
            rows.append(y)
    # float32 when a vector rides along: float16 would round away its small differences
    vector = inp.stats or inp.source == "embedding"
    return np.ascontiguousarray(np.stack(rows)).astype(np.float32 if vector else np.float16)
