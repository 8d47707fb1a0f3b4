"""The embedded default dataset: a procedural production line of machined flanges, in MVTec AD layout.

A fixed camera looks down on turned steel flanges (central bore, four bolt holes, a laser-etched
part number and index line) lying on a dark belt. Good parts differ the way real ones do: a few
px of position, +-5 deg of rotation, +-10 % light, sensor noise, focus and texture. Defective
parts are fresh good parts with a synthetic defect (training/defects.py) painted on the part, or
with a feature really left out (missing_feature).

    python -m training.synthetic_line data/synthetic_line        # the default LineSpec
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.errors import KenpinError
from training.defects import DEFECT_KINDS, paint_defect

_README_TITLE = "kenpin synthetic production line"
FEATURES = ("hole", "marking", "index")  # what a missing_feature part can lack
_MARKING = "KP-2041"


@dataclass(frozen=True)
class LineSpec:
    """What to generate; the same spec always gives byte-identical files."""

    seed: int = 0
    size: int = 256  # square images, px
    n_train: int = 120  # train/good
    n_test_good: int = 40  # test/good
    n_test_per_defect: int = 12  # per defect kind in test/<kind>/

    def __post_init__(self) -> None:
        if self.size < 64:
            raise KenpinError(f"LineSpec size={self.size} is too small: images need at least 64 px")
        counts = {k: v for k, v in dataclasses.asdict(self).items() if k.startswith("n_")}
        if min(counts.values()) < 0:
            raise KenpinError(f"LineSpec counts must not be negative, got {counts}")


@dataclass(frozen=True)
class _Part:
    """Everything random about one part, drawn up front, so it can be re-rendered minus a feature."""

    size: int
    centre: tuple[float, float]  # px
    angle: float  # rad
    gain: float  # light level
    light: float  # direction the light comes from, rad
    noise: float  # sensor noise sigma, grey levels
    blur: float  # focus blur sigma, px
    seed: int  # textures and noise


def _sample_part(rng: np.random.Generator, size: int) -> _Part:
    """The nuisance variation between good parts on a fixed-camera line."""
    s = size / 256
    u = [float(x) for x in rng.uniform(-1, 1, 7)]  # Python floats keep the float32 maths float32
    return _Part(
        size=size,
        centre=(size / 2 + 3 * s * u[0], size / 2 + 3 * s * u[1]),
        angle=math.radians(5 * u[2]),
        gain=1 + 0.1 * u[3],
        light=math.radians(-135 + 8 * u[4]),  # from the upper left
        noise=2.5 + u[5],
        blur=(0.6 + 0.3 * u[6]) * s,
        seed=int(rng.integers(2**31)),
    )


def render_part(rng: np.random.Generator, size: int) -> np.ndarray:
    """One good part: HxWx3 uint8 RGB, ``size`` px square."""
    return _draw(_sample_part(rng, size))[0]


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from the signed distance (px, > 0 inside) to its edge."""
    return np.clip(signed_distance + 0.5, 0, 1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise (about ``cells`` blobs across, std near 1): casting, blotches, uneven light."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _geometry(size: int) -> dict[str, float]:
    """The part's drawing, in px: radii of the flange, hub, bore, bolt circle and holes."""
    return {k: v * size for k, v in
            dict(outer=0.40, hub=0.21, bore=0.12, pitch=0.305, hole=0.037, chamfer=0.013).items()}


def _ink(p: _Part, omit: str | None) -> np.ndarray:
    """Laser marking (part number, index line) in part coordinates, rotated/shifted onto the image."""
    n, g = p.size, _geometry(p.size)
    canvas = np.zeros((n, n), np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.34 * n / 256
    thick = max(1, round(n / 256))
    if omit != "marking":
        (tw, th), _ = cv2.getTextSize(_MARKING, font, scale, thick)
        org = (round(n / 2 - tw / 2), round(n / 2 + g["pitch"] + th / 2))
        cv2.putText(canvas, _MARKING, org, font, scale, 255, thick, cv2.LINE_AA)
    if omit != "index":
        x = n / 2 * 16
        top, bottom = round((n / 2 - 0.345 * n) * 16), round((n / 2 - 0.27 * n) * 16)  # 4 fractional bits
        cv2.line(canvas, (round(x), bottom), (round(x), top), 255, thick + 1, cv2.LINE_AA, 4)
    c, s = math.cos(p.angle), math.sin(p.angle)
    m = np.array([[c, -s, p.centre[0] - (c - s) * n / 2], [s, c, p.centre[1] - (s + c) * n / 2]], np.float32)
    return cv2.warpAffine(canvas, m, (n, n), flags=cv2.INTER_LINEAR).astype(np.float32) / 255


def _rim(r: np.ndarray, ang: np.ndarray, light: float, radius: float, width: float,
         outward: bool) -> tuple[np.ndarray, np.ndarray]:
    """A chamfer ring: its coverage, and its shading (lit on the side facing the light)."""
    cover = _coverage(width / 2 - np.abs(r - radius + width / 2))
    # ``light`` is the direction towards the lamp: a facet tilted that way is bright.
    facing = np.cos(ang - light) * (1 if outward else -1)
    return cover, 150 + 85 * facing


def _draw(p: _Part, omit: str | None = None, hole: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a part (optionally without ``omit`` in FEATURES; ``hole`` picks which bolt hole).

    Returns (HxWx3 uint8 RGB image, HxW bool mask of the part's material).
    """
    n, g, trng = p.size, _geometry(p.size), np.random.default_rng(p.seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    dx, dy = xx - p.centre[0], yy - p.centre[1]
    r, ang = np.hypot(dx, dy), np.arctan2(dy, dx)
    c, s = math.cos(p.angle), math.sin(p.angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # part coordinates: the part's drawing does not rotate
    part = _coverage(g["outer"] - r) * _coverage(r - g["bore"])
    # Turned steel: concentric lathe grooves (noise along the radius) and the bow-tie highlight that
    # a turned surface shows under one light, plus faint casting blotches.
    grooves = np.convolve(trng.standard_normal(int(4 * n) + 8), [0.25, 0.5, 0.25], "same").astype(np.float32)
    grooves = grooves[(4 * r).astype(int)]
    bow_tie = 1 + 0.13 * np.cos(2 * (ang - p.light - 0.6))
    metal = np.where(r < g["hub"], np.float32(172), np.float32(140)) * bow_tie  # the hub is brighter
    metal *= 1 + 0.045 * grooves + 0.04 * _smooth_noise(trng, n, 6)
    ch = g["chamfer"]
    rims = [(g["outer"], ch, True), (g["bore"] + ch, ch, False), (g["hub"] + 0.6 * ch, 0.6 * ch, True)]
    for radius, width, outward in rims:  # chamfers and the hub's step catch or lose the light by side
        cover, shade = _rim(r, ang, p.light, radius, width, outward)
        metal = metal * (1 - cover) + shade * cover
    for k in range(4):  # bolt holes on the diagonals, leaving room for the marks
        at = math.pi / 4 * (2 * k + 1)
        hx, hy = g["pitch"] * math.cos(at), g["pitch"] * math.sin(at)
        if omit == "hole" and k == hole % 4:
            continue
        hr, hang = np.hypot(u - hx, v - hy), np.arctan2(v - hy, u - hx) + p.angle
        cover, shade = _rim(hr, hang, p.light, g["hole"] + 0.8 * ch, 0.8 * ch, False)
        metal = metal * (1 - cover) + shade * cover
        part *= _coverage(hr - g["hole"])
    metal *= 1 - 0.6 * _ink(p, omit)  # etched marks are dark
    grey = _belt(part, trng) * (1 - part) + metal * part
    return _camera(grey, p, trng), part > 0.5


def _belt(part: np.ndarray, trng: np.random.Generator) -> np.ndarray:
    """Dark belt: fabric grain, uneven light, and the part's soft shadow (light from the upper left)."""
    n = part.shape[0]
    grain = cv2.GaussianBlur(trng.standard_normal((n, n), dtype=np.float32), (0, 0), 0.8) / 0.28  # std ~1
    belt = 52 * (1 + 0.05 * _smooth_noise(trng, n, 4)) + 4 * grain
    off = round(4 * n / 256)
    return belt * (1 - 0.45 * cv2.GaussianBlur(np.roll(part, (off, off), (0, 1)), (0, 0), 3 * n / 256))


def _camera(grey: np.ndarray, p: _Part, trng: np.random.Generator) -> np.ndarray:
    """What the sensor makes of the scene: tint, light level and fall-off, focus blur, noise."""
    rgb = np.stack([grey * 0.97, grey, grey * 1.04], -1)  # slightly cool steel and belt
    rgb *= (p.gain * (1 + 0.04 * _smooth_noise(trng, p.size, 2)))[..., None]
    rgb = cv2.GaussianBlur(rgb, (0, 0), p.blur)
    rgb += trng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(p.noise)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _missing_feature(p: _Part, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same part rendered without one feature; the mask is the region where that feature was."""
    feature, hole = FEATURES[int(rng.integers(len(FEATURES)))], int(rng.integers(4))
    good, bad = _draw(p)[0], _draw(p, feature, hole)[0]
    # Both renders share every random number, so they differ exactly where the feature was; closing
    # turns the marking's strokes into the area of the marking.
    changed = (np.abs(good.astype(np.int16) - bad).max(-1) > 4).astype(np.uint8)
    k = max(3, round(0.04 * p.size)) | 1
    region = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return bad, np.where(cv2.dilate(region, np.ones((3, 3), np.uint8)) > 0, 255, 0).astype(np.uint8)


def _defective(spec: LineSpec, kind: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Test part ``index`` of ``kind``: a fresh good part with that defect, and its mask."""
    rng = np.random.default_rng((spec.seed, 2, DEFECT_KINDS.index(kind), index))
    p = _sample_part(rng, spec.size)
    if kind == "missing_feature":
        return _missing_feature(p, rng)
    image, material = _draw(p)
    # Centres on the part, away from its anti-aliased edges; a chip bites into the outer edge.
    k = max(3, round(5 * spec.size / 256)) | 1
    inner = cv2.erode(material.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    on_part = material if kind == "chip" else inner
    return paint_defect(image, kind, rng, region=on_part)


def _write(path: Path, image: np.ndarray) -> None:
    """PNG (lossless, deterministic): RGB images are stored BGR as OpenCV expects, masks as grey."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image):
        raise KenpinError(f"{path}: could not write the image (is the folder writable?)")


def _prepare(out_dir: Path) -> None:
    """Make ``out_dir`` empty; refuse to clear a folder that is not an earlier synthetic line."""
    readme = out_dir / "README.txt"
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(_README_TITLE)):
            raise KenpinError(f"{out_dir}: folder is not empty and holds no synthetic line; name a new folder")
        for sub in ("train", "test", "ground_truth"):  # ours to replace: an earlier spec's files
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _readme(spec: LineSpec) -> str:
    """README.txt: what this folder is, the spec that made it, and how to make it again."""
    fields = "\n".join(f"  {k} = {v}" for k, v in dataclasses.asdict(spec).items())
    return (
        f"{_README_TITLE} (MVTec AD layout)\n\n"
        "Procedural top-down images of turned steel flanges on a dark belt, made by\n"
        "training/synthetic_line.py. Good parts vary in position, rotation, light, noise, focus\n"
        f"and texture. Defect kinds in test/: {', '.join(DEFECT_KINDS)}; masks in\n"
        "ground_truth/<kind>/<stem>_mask.png (255 = defect). Synthetic, for demos and smoke\n"
        "tests: figures measured on it say nothing about real parts.\n\n"
        f"spec:\n{fields}\n\n"
        f"Same spec, same bytes:\n  python -m training.synthetic_line OUT_DIR {_flags(spec)}\n"
    )


def generate_line(out_dir: Path, spec: LineSpec = LineSpec()) -> Path:
    """Write the line as train/good, test/good, test/<kind>, ground_truth/<kind> and README.txt.

    Deterministic: the same spec gives byte-identical files (each image has its own seed, so
    changing one count does not change the other images). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    _prepare(out_dir)
    for split, code, count in (("train", 0, spec.n_train), ("test", 1, spec.n_test_good)):
        for i in range(count):
            _write(out_dir / split / "good" / f"{i:03d}.png",
                   render_part(np.random.default_rng((spec.seed, code, i)), spec.size))
    for kind in DEFECT_KINDS:
        for i in range(spec.n_test_per_defect):
            image, mask = _defective(spec, kind, i)
            _write(out_dir / "test" / kind / f"{i:03d}.png", image)
            _write(out_dir / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    (out_dir / "README.txt").write_text(_readme(spec))
    return out_dir


def _flags(spec: LineSpec) -> str:
    """The command-line flags that give ``spec``."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in dataclasses.asdict(spec).items())


def main(argv: list[str] | None = None) -> None:
    """Command line: write a line (the default LineSpec unless flags say otherwise) to a folder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    for f in dataclasses.fields(LineSpec):  # one flag per spec field, so every spec can be remade
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    args = vars(ap.parse_args(argv))
    out_dir = args.pop("out_dir")
    print(generate_line(out_dir, LineSpec(**args)))


if __name__ == "__main__":
    main()
