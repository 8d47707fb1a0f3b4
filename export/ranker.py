"""A trained RankNet scorer into an existing bundle: ONNX, int8, parity gate, atomic re-write.

The ranker joins the bundle under ``rankers.<role>`` (``quality`` or ``grade``) with both
precisions; every file is re-hashed and the bundle is verified by the station's own loader before
it replaces the old one, so a failed export leaves the bundle as it was.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device.bundle import load_bundle
from device.errors import KenpinError
from device.ranker_input import ROLES, RankerInput
from device.session import OnnxModel
from export.bundle_writer import staging_dir, write_bundle
from export.onnx_export import INPUT_NAME
from export.parity import Parity, compare, pick_best
from export.quantize import quantize_int8
from training.recipe import QuantSpec

log = logging.getLogger(__name__)
OUTPUT_NAME = "score"
# Keys write_bundle sets itself; everything else of the old manifest is carried over.
_WRITER_KEYS = ("schema", "schema_version", "bundle_id", "created_utc", "files", "manifest_sha256")
DESCRIPTION = {
    "quality": "capture quality: RankNet score, frames below the floor are retaken",
    "grade": "grade: RankNet score learnt from operator judgements, higher = ranked higher",
}


@dataclass(frozen=True)
class RankerExportSpec(QuantSpec):
    """int8 quantization of a ranker and the parity it must keep with fp32 (a ranker's own defaults)."""

    quant_methods: tuple[str, ...] = ("MinMax", "Percentile")
    fp32_leading_convs: int = 5  # the fixed Haar (3 levels) and high-pass filters and the first crop convolution stay fp32
    parity_min_spearman: float = 0.95
    parity_max_mean_abs_diff: float = 0.5  # in units of the fp32 scores' standard deviation
    reduce_range: bool = True  # 7-bit weights (export.quantize.quantize_int8 says why)


def export_onnx(model: torch.nn.Module, inp: RankerInput, path: Path) -> None:
    """``model`` (N x C x S x S → N x outputs) to ONNX, dynamic batch, opset 17, checked."""
    import onnx

    model.eval()
    torch.onnx.export(model, (torch.zeros(inp.shape),), str(path), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))


def ort_scores(path: Path, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Scores (N x outputs) of model inputs with an ONNX model, in the station's session settings."""
    model = OnnxModel(path, 1)
    x = inputs.astype(np.float32, copy=False)
    return np.concatenate([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def _parity(method: str, fp32: np.ndarray, int8: np.ndarray) -> Parity:
    """Agreement per output column; the worst column's figures (every family must keep its order)."""
    cols = []
    for c in range(fp32.shape[1]):
        # Raw RankNet scores have no fixed scale: compare them in units of the fp32 spread.
        mu, sd = float(fp32[:, c].mean()), float(fp32[:, c].std()) or 1.0
        cols.append(compare(method, (fp32[:, c] - mu) / sd, (int8[:, c] - mu) / sd))
    return Parity(method, len(fp32), min(p.spearman for p in cols), max(p.mean_abs_diff for p in cols),
                  max(p.max_abs_diff for p in cols), min(p.verdict_agreement for p in cols))


def quantize_ranker(fp32: Path, work: Path, calib: np.ndarray, check: np.ndarray,
                    spec: RankerExportSpec, op_types: tuple[str, ...] = ("Conv",)) -> tuple[Path, Parity, list[Parity]]:
    """Quantize ``op_types`` with each calibrator; the parity gate keeps the int8 model closest to fp32 on ``check``.

    Convolutions only by default: they are nearly all of a CNN ranker's work, while its head is a
    few hundred multiply-adds on pooled features whose small differences *are* the ranking
    (quantizing it too cost the grade's int8/fp32 rank agreement 0.84 on the tiny line). A model
    without convolutions (an embedding MLP) names its matrix products instead.
    """
    ref = ort_scores(fp32, check)
    tried: dict[str, tuple[Path, Parity]] = {}
    for method in spec.quant_methods:
        path = work / f"int8_{method}.onnx"
        quantize_int8(fp32, path, calib.astype(np.float32), method, spec.fp32_leading_convs,
                      reduce_range=spec.reduce_range, op_types=list(op_types), minmax_moving_average=False)
        tried[method] = (path, _parity(method, ref, ort_scores(path, check)))
    best = pick_best([p for _, p in tried.values()], spec.parity_min_spearman, spec.parity_max_mean_abs_diff)
    return tried[best.method][0], best, [p for _, p in tried.values()]


def add_to_bundle(bundle: Path, role: str, fp32: Path, int8: Path, entry: dict[str, Any],
                  extra: dict[str, Path] | None = None) -> dict[str, Any]:
    """Copy ``bundle`` with the ranker of ``role`` added (or replaced), re-hash, verify, swap in atomically.
    ``extra``: more files of the ranker, by entry key (each stored as ``<role>_<key><suffix>``)."""
    if role not in ROLES:
        raise KenpinError(f"role {role!r}: use one of {list(ROLES)}")
    old = load_bundle(bundle)  # refuse to extend a bundle that does not verify
    body = {k: v for k, v in old.manifest.items() if k not in _WRITER_KEYS}
    rankers = dict(body.get("rankers", {}))
    extra = extra or {}
    keys = ("model", "fp32_model", *extra, *(k for k in _EXTRA_KEYS if k not in extra))
    dropped = {rankers[role].get(k) for k in keys} - {None} if role in rankers else set()
    names = {"model": f"{role}_int8.onnx", "fp32_model": f"{role}_fp32.onnx",
             **{k: f"{role}_{k}{p.suffix}" for k, p in extra.items()}}
    rankers[role] = {**names, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, **entry}
    body["rankers"] = rankers
    body["roles"] = {**body.get("roles", {}), role: DESCRIPTION[role]}
    staged = staging_dir(bundle)
    try:
        for name in old.manifest["files"]:
            if name not in dropped:
                shutil.copy2(bundle / name, staged / name)
        shutil.copy2(int8, staged / names["model"])
        shutil.copy2(fp32, staged / names["fp32_model"])
        for k, p in extra.items():
            shutil.copy2(p, staged / names[k])
        write_bundle(bundle, staged, body)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return rankers[role]


# entry keys naming a ranker's extra files: a retrained ranker drops its predecessor's
_EXTRA_KEYS = ("calibration_frames",)


def parity_entry(best: Parity, tried: list[Parity], spec: RankerExportSpec) -> dict[str, Any]:
    """The manifest's record of the parity gate."""
    return {"chosen": best.to_dict(), "tried": [p.to_dict() for p in tried],
            "scale": "scores in units of the fp32 scores' standard deviation",
            "tolerance": {"min_spearman": spec.parity_min_spearman, "max_mean_abs_diff": spec.parity_max_mean_abs_diff}}
