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

from device.calibrate import calibrate
from device.errors import BundleError
from device.errors import KenpinError
from device.preprocess import Preprocess
from device.ranker_input import ROLES, QualityFamily, RankerInput, VerdictGuard
from device.scoring import Fusion, Normalization, TextureModel

MANIFEST = "manifest.json"
SCHEMA = "kenpin.bundle"
# The newest schema this runtime reads: 2 added the texture model (image score fusion), 3 the
# probe set and several int8 variants (the station proves them on its own CPU).
SCHEMA_VERSION = 3


def schema_version_for(body: dict[str, Any]) -> int:
    """The oldest schema that describes ``body``: a runtime older than that would score it wrongly."""
    if "probes" in body:
        return 3
    variants = body.get("variants", {})
    return 2 if any("texture" in v for v in variants.values() if isinstance(v, dict)) else 1


PRECISIONS = ("int8", "fp32")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own ``manifest_sha256`` field.

    Covers thresholds, preprocessing and file hashes alike, so a hand-edited manifest is refused.
    """
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def bundle_id_of(files: dict[str, str]) -> str:
    """A bundle's id: derived from its files' names and SHA-256s (what the exporter writes), so two
    bundles share an id only when they hold the same files."""
    return hashlib.sha256("".join(f"{n}:{d}" for n, d in files.items()).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ProbeScores:
    """A variant's raw image scores of the probe set where it was exported."""

    good: np.ndarray
    defect: np.ndarray


@dataclass(frozen=True)
class Variant:
    """One variant of the anomaly model: embedder, its reference bank, its calibrated threshold.

    ``name`` is the manifest's key (``fp32``, ``int8-w8``, ``int8-w7``; ``int8`` in bundles from
    before the station's own check); ``precision`` is ``int8`` or ``fp32``.
    """

    name: str
    precision: str
    model: Path
    bank: Path
    normalization: Normalization
    grid: tuple[int, int]
    dim: int
    texture: TextureModel | None = None  # with ``fusion``: the image score also weighs texture
    fusion: Fusion | None = None
    heat_floor: float | None = None  # patch distance good parts rarely exceed (heat maps start there)
    probe_scores: ProbeScores | None = None  # schema 3
    # raw scores of the held-out good images that set the threshold (as this CPU sees them once the
    # self-check has recalibrated); None in bundles from before they were recorded
    holdout_scores: np.ndarray | None = None
    search: Path | None = None  # the bank search as an int8 graph (scoring.search: int8); None: fp32 GEMM

    def threshold_at(self, false_reject_rate: float) -> float | None:
        """The raw threshold at another false-reject budget, by the export's quantile rule on the
        held-out good scores; None where the bundle did not record them."""
        if self.holdout_scores is None:
            return None
        return calibrate(self.holdout_scores, false_reject_rate).threshold


@dataclass(frozen=True)
class ProbeSpec:
    """The bundle's probe set: good and synthetic-defect images at the model input size."""

    path: Path
    n_good: int
    n_defect: int


@dataclass(frozen=True)
class Ranker:
    """An optional RankNet scorer: role ``quality`` (the capture gate) or ``grade``."""

    role: str
    model: Path  # int8
    fp32_model: Path
    input: RankerInput
    floor: float | None  # quality only: frames scoring below it are retaken
    reference_scores: tuple[float, ...] = ()  # grade only: sorted scores of the rated images
    families: tuple[QualityFamily, ...] = ()  # quality only: one per model output (none: a single score)
    guard: VerdictGuard | None = None  # quality only: calibrated against verdict flips (None: floors only, older bundles)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, ready to load."""

    root: Path
    manifest: dict[str, Any]
    preprocess: Preprocess
    variants: dict[str, Variant]
    rankers: dict[str, Ranker] = field(default_factory=dict)
    probes: ProbeSpec | None = None  # None: a bundle from before the station's own check

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def heatmap_sigma(self) -> float:
        return float(self.manifest["scoring"]["heatmap_sigma"])

    @property
    def int8_default(self) -> str | None:
        """The int8 variant that passed the parity gate where the bundle was exported (None: no int8)."""
        name = self.manifest.get("int8_default", "int8")
        return name if name in self.variants else None

    def variant(self, name: str) -> Variant:
        """A variant by its manifest key; ``int8`` is the export's own int8 choice."""
        key = self.int8_default if name == "int8" else name
        if key not in self.variants:
            raise BundleError(f"{self.root / MANIFEST}: no '{name}' model in this bundle; it has {sorted(self.variants)}")
        return self.variants[key]

    def int8_variants(self) -> list[Variant]:
        """Every int8 variant, the export's own choice first."""
        return sorted((v for v in self.variants.values() if v.precision == "int8"),
                      key=lambda v: v.name != self.int8_default)


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


def _precision(name: str, spec: Any) -> str | None:
    """``int8`` / ``fp32`` for a manifest variant key (a newer kind of variant: None, ignored)."""
    if not isinstance(spec, dict):
        return None
    precision = spec.get("precision", name)
    return precision if precision in PRECISIONS else None


def _probe_scores(where: str, spec: dict[str, Any], probes: ProbeSpec | None) -> ProbeScores | None:
    if probes is None:
        return None
    try:
        ps = spec["probe_scores"]
        scores = ProbeScores(np.asarray(ps["good"], np.float64), np.asarray(ps["defect"], np.float64))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}.probe_scores: missing or invalid ({e}); every variant records its probe scores") from None
    if len(scores.good) != probes.n_good or len(scores.defect) != probes.n_defect or not (
            np.isfinite(scores.good).all() and np.isfinite(scores.defect).all()):
        raise BundleError(f"{where}.probe_scores: need {probes.n_good} good and {probes.n_defect} defect finite scores")
    return scores


def _holdout_scores(where: str, spec: dict[str, Any]) -> np.ndarray | None:
    raw = (spec.get("calibration") or {}).get("holdout_scores")
    if raw is None:  # optional: bundles exported before it have none
        return None
    try:
        scores = np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        scores = np.empty(0)
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise BundleError(f"{where}.calibration.holdout_scores: must be a non-empty list of finite scores")
    return scores


def _variant(root: Path, manifest: dict[str, Any], name: str, spec: dict[str, Any],
             probes: ProbeSpec | None) -> Variant:
    where = f"{root / MANIFEST}: variants.{name}"
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
    search = spec.get("search")  # optional: bundles exported before it, and fp32-search recipes, have none
    if search is not None and search not in manifest["files"]:
        raise BundleError(f"{where}.search = {search!r} is not a file listed in 'files'")
    return Variant(name, str(_precision(name, spec)), root / spec["model"], bank_path, norm, grid, dim, texture,
                   fusion, None if floor is None else float(floor), _probe_scores(where, spec, probes),
                   _holdout_scores(where, spec), None if search is None else root / search)


def _probes(root: Path, manifest: dict[str, Any]) -> ProbeSpec | None:
    """The ``probes`` entry (schema 3); None for older bundles."""
    spec = manifest.get("probes")
    if spec is None:
        if manifest["schema_version"] >= 3:
            raise BundleError(f"{root / MANIFEST}: schema_version 3 needs a 'probes' entry (the station's own check)")
        return None
    where = f"{root / MANIFEST}: probes"
    if not isinstance(spec, dict) or spec.get("file") not in manifest["files"]:
        raise BundleError(f"{where}.file = {spec.get('file') if isinstance(spec, dict) else spec!r} "
                          "is not a file listed in 'files'")
    try:
        n_good, n_defect = int(spec["n_good"]), int(spec["n_defect"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: n_good/n_defect missing or invalid ({e})") from None
    if n_good < 2 or n_defect < 1:
        raise BundleError(f"{where}: {n_good} good and {n_defect} defect probes; need at least 2 and 1")
    return ProbeSpec(root / spec["file"], n_good, n_defect)


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
        flips = (spec.get("calibration") or {}).get("verdict_flips") if role == "quality" else None
        guard = VerdictGuard.from_dict(flips["rule"]) if flips else None
    except (KeyError, TypeError, ValueError, AttributeError, KenpinError) as e:
        raise BundleError(f"{where}: input/floor/families/calibration missing or invalid ({e})") from None
    if list(spec.get("input_shape", [])) != inp.shape:
        raise BundleError(f"{where}.input_shape = {spec.get('input_shape')} does not match its input {inp.shape}")
    if floor is not None and not np.isfinite(floor):
        raise BundleError(f"{where}.floor = {floor}: must be a finite number")
    if len({f.name for f in fams}) != len(fams):
        raise BundleError(f"{where}.families: a family name appears twice")
    return Ranker(role, root / spec["model"], root / spec["fp32_model"], inp, floor, tuple(sorted(ref)), fams, guard)


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
    probes = _probes(root, manifest)
    variants = {n: _variant(root, manifest, n, s, probes) for n, s in specs.items() if _precision(n, s)}
    if not variants:
        raise BundleError(f"{root / MANIFEST}: no model variant among {PRECISIONS}")
    if "fp32" not in variants and probes is not None:
        raise BundleError(f"{root / MANIFEST}: a bundle with probes needs its fp32 variant (the reference)")
    for v in variants.values():
        expected = [1, 3, pre.height, pre.width]
        actual = list(manifest["variants"][v.name]["input_shape"])
        if actual[1:] != expected[1:]:
            raise BundleError(f"{v.model}: input shape {actual} does not match the preprocessing {expected}")
    rankers = manifest.get("rankers", {})  # optional: a bundle without them stays valid
    if not isinstance(rankers, dict):
        raise BundleError(f"{root / MANIFEST}: 'rankers' must map a role to its model")
    return Bundle(root, manifest, pre, variants, {r: _ranker(root, manifest, r, s) for r, s in rankers.items()},
                  probes)
