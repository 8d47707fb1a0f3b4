"""The bundle: one directory with a manifest naming every file with its SHA-256.

A station loads a bundle only after every hash, the schema version and the shapes check out,
so an exported model cannot silently differ from what was evaluated.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import BundleError
from device.errors import KenpinError
from device.preprocess import Preprocess
from device.quality import ROLES, QualityFamily, RankerInput
from device.scoring import Fusion, Normalization, TextureModel

MANIFEST = "manifest.json"
SCHEMA = "kenpin.bundle"
SCHEMA_VERSION = 2  # the newest this runtime reads; 2 added the texture model (image score fusion)


def schema_version_for(body: dict[str, Any]) -> int:
    """The oldest schema that describes ``body``: a runtime older than that would score it wrongly."""
    variants = body.get("variants", {})
    return 2 if any("texture" in v for v in variants.values() if isinstance(v, dict)) else 1
PRECISIONS = ("int8", "fp32")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own ``manifest_sha256`` field.

    Covers thresholds, preprocessing and file hashes alike, so a hand-edited manifest is refused.
    """
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Variant:
    """One precision of the anomaly model: embedder, its reference bank, its calibrated threshold."""

    precision: str
    model: Path
    bank: Path
    normalization: Normalization
    grid: tuple[int, int]
    dim: int
    texture: TextureModel | None = None  # with ``fusion``: the image score also weighs texture
    fusion: Fusion | None = None
    heat_floor: float | None = None  # patch distance good parts rarely exceed (heat maps start there)


@dataclass(frozen=True)
class Ranker:
    """An optional RankNet scorer (issue 4): role ``quality`` (the capture gate) or ``grade``."""

    role: str
    model: Path  # int8
    fp32_model: Path
    input: RankerInput
    floor: float | None  # quality only: frames scoring below it are retaken
    reference_scores: tuple[float, ...] = ()  # grade only: sorted scores of the rated images
    families: tuple[QualityFamily, ...] = ()  # quality only: one per model output (none: a single score)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, ready to load."""

    root: Path
    manifest: dict[str, Any]
    preprocess: Preprocess
    variants: dict[str, Variant]
    rankers: dict[str, Ranker] = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def heatmap_sigma(self) -> float:
        return float(self.manifest["scoring"]["heatmap_sigma"])

    def variant(self, precision: str) -> Variant:
        if precision not in self.variants:
            raise BundleError(
                f"{self.root / MANIFEST}: no '{precision}' model in this bundle; it has {sorted(self.variants)}"
            )
        return self.variants[precision]


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse and schema-check ``manifest.json``; BundleError says what is wrong."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: missing; a bundle directory needs its manifest")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{path}: schema is {manifest.get('schema')!r}, expected {SCHEMA!r}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version} is newer than this runtime supports ({SCHEMA_VERSION}); upgrade kenpin"
        )
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"{path}: contents do not match its manifest_sha256; the manifest was edited or corrupted")
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest names exists and has the recorded SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{root / MANIFEST}: 'files' must list every file with its SHA-256")
    for name, digest in files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{root / MANIFEST}: file name {name!r} must be relative to the bundle")
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing from the bundle")
        if sha256_file(path) != digest:
            raise BundleError(f"{path}: SHA-256 does not match the manifest; the file was changed or corrupted")


def _variant(root: Path, manifest: dict[str, Any], precision: str, spec: dict[str, Any]) -> Variant:
    where = f"{root / MANIFEST}: variants.{precision}"
    for key in ("model", "bank"):
        if spec.get(key) not in manifest["files"]:
            raise BundleError(f"{where}.{key} = {spec.get(key)!r} is not a file listed in 'files'")
    bank_path = root / spec["bank"]
    shape = np.load(bank_path, mmap_mode="r").shape
    dim = int(spec["output_shape"][1])
    if len(shape) != 2 or shape[1] != dim:
        raise BundleError(f"{bank_path}: reference bank shape {shape} does not match the model's {dim} channels")
    try:
        norm = Normalization(float(spec["threshold"]), float(spec["scale"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: threshold/scale missing or invalid ({e})") from None
    grid = (int(spec["output_shape"][2]), int(spec["output_shape"][3]))
    texture, fusion = _texture(root, manifest, where, spec, dim)
    floor = spec.get("heat_floor")  # optional: bundles exported before it have none
    if floor is not None and not (isinstance(floor, (int, float)) and np.isfinite(floor) and floor >= 0):
        raise BundleError(f"{where}.heat_floor = {floor!r}: must be a non-negative patch distance")
    return Variant(precision, root / spec["model"], bank_path, norm, grid, dim, texture, fusion,
                   None if floor is None else float(floor))


def _texture(root: Path, manifest: dict[str, Any], where: str, spec: dict[str, Any],
             dim: int) -> tuple[TextureModel | None, Fusion | None]:
    """The optional texture model (``texture``: an .npz with mean and precision) and its ``fusion``."""
    if "texture" not in spec:
        return None, None
    name = spec["texture"]
    if name not in manifest["files"]:
        raise BundleError(f"{where}.texture = {name!r} is not a file listed in 'files'")
    try:
        with np.load(root / name) as z:
            texture = TextureModel(z["mean"].astype(np.float64), z["precision"].astype(np.float64))
        fusion = Fusion(**{k: float(v) for k, v in spec["fusion"].items()})
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise BundleError(f"{where}: texture model or fusion missing or invalid ({e})") from None
    if texture.mean.shape[0] != 2 * dim:
        raise BundleError(f"{root / name}: texture model of dimension {texture.mean.shape[0]} does not match "
                          f"the model's {dim} channels (expected {2 * dim})")
    return texture, fusion


def _ranker(root: Path, manifest: dict[str, Any], role: str, spec: Any) -> Ranker:
    """Check one ``rankers.<role>`` entry: known role, listed files, input spec and shape, floor."""
    where = f"{root / MANIFEST}: rankers.{role}"
    if role not in ROLES or not isinstance(spec, dict):
        raise BundleError(f"{where}: unknown ranker role or not a mapping; roles are {list(ROLES)}")
    for key in ("model", "fp32_model"):
        if spec.get(key) not in manifest["files"]:
            raise BundleError(f"{where}.{key} = {spec.get(key)!r} is not a file listed in 'files'")
    try:
        inp = RankerInput.from_dict(spec["input"])
        floor = float(spec["floor"]) if role == "quality" else None
        ref = tuple(float(v) for v in spec.get("reference_scores", ()))
        fams = tuple(QualityFamily.from_dict(f) for f in spec.get("families", ())) if role == "quality" else ()
    except (KeyError, TypeError, ValueError, KenpinError) as e:
        raise BundleError(f"{where}: input/floor/families missing or invalid ({e})") from None
    if list(spec.get("input_shape", [])) != inp.shape:
        raise BundleError(f"{where}.input_shape = {spec.get('input_shape')} does not match its input {inp.shape}")
    if floor is not None and not np.isfinite(floor):
        raise BundleError(f"{where}.floor = {floor}: must be a finite number")
    if len({f.name for f in fams}) != len(fams):
        raise BundleError(f"{where}.families: a family name appears twice")
    return Ranker(role, root / spec["model"], root / spec["fp32_model"], inp, floor, tuple(sorted(ref)), fams)


def load_bundle(root: str | Path) -> Bundle:
    """Verify a bundle directory (schema, hashes, shapes) and describe it; raises BundleError."""
    root = Path(root)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    try:
        pre = Preprocess.from_dict(manifest["preprocessing"])
        specs = manifest["variants"]
    except KeyError as e:
        raise BundleError(f"{root / MANIFEST}: missing key {e}") from None
    variants = {p: _variant(root, manifest, p, s) for p, s in specs.items() if p in PRECISIONS}
    if not variants:
        raise BundleError(f"{root / MANIFEST}: no model variant among {PRECISIONS}")
    for v in variants.values():
        expected = [1, 3, pre.height, pre.width]
        actual = list(manifest["variants"][v.precision]["input_shape"])
        if actual[1:] != expected[1:]:
            raise BundleError(f"{v.model}: input shape {actual} does not match the preprocessing {expected}")
    rankers = manifest.get("rankers", {})  # optional: a bundle without them stays valid
    if not isinstance(rankers, dict):
        raise BundleError(f"{root / MANIFEST}: 'rankers' must map a role to its model")
    return Bundle(root, manifest, pre, variants, {r: _ranker(root, manifest, r, s) for r, s in rankers.items()})
