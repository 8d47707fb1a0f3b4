"""Actions for the quality engineer, each behind the engineer's token and audited by the station:
product switch, threshold adjust and undo, bundle upload + activate (verified first) and roll-back
(threshold and bundle act on the active product), software trigger, and marking a verdict wrong
(saved as feedback for retraining)."""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, field_validator

from device.dashboard.access import require_engineer, who
from device.dashboard.archive import extract_bundle
from device.dashboard.verdicts import MAX_ID

router = APIRouter(prefix="/api", tags=["actions"], dependencies=[Depends(require_engineer)])


class ThresholdChange(BaseModel):
    threshold: float = Field(gt=0, le=100, description="operator-facing score threshold (the bundle's is 0.5)")

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("the threshold must be a finite number")
        return v


class ProductSwitch(BaseModel):
    number: int = Field(ge=0, le=2**31 - 1, description="the product's number in the station config's products:")


class Correction(BaseModel):
    correct: Literal["good", "defect"] = Field(description="what the part really was")


@router.post("/threshold", summary="Set the threshold (audited, undoable)")
def set_threshold(request: Request, change: ThresholdChange) -> dict:
    station = request.app.state.station
    station.set_threshold(change.threshold, who(request))
    return {"threshold": station.threshold}


@router.post("/threshold/undo", summary="Undo the last threshold change (audited)")
def undo_threshold(request: Request) -> dict:
    station = request.app.state.station
    station.undo_threshold(who(request))
    return {"threshold": station.threshold}


@router.post("/product", summary="Switch the active product (between two parts; audited, kept across restarts)")
def switch_product(request: Request, switch: ProductSwitch) -> dict:
    """Parts announced from now on are judged as this product; an unknown number is a 400 naming the
    known ones, and the station stays on its product."""
    return {"product": request.app.state.station.switch_product(switch.number, who(request))}


@router.post("/trigger", summary="Trigger an inspection now (software trigger)")
def trigger(request: Request) -> dict:
    return {"trigger_id": request.app.state.station.trigger("software")}


@router.post("/verdicts/{verdict_id}/mark", summary="Mark a verdict wrong: the image is kept with the right label")
def mark_wrong(request: Request, correction: Correction,
               verdict_id: int = PathParam(ge=1, le=MAX_ID)) -> dict:
    station = request.app.state.station
    if station.store.get(verdict_id) is None:
        raise HTTPException(404, f"no verdict with id {verdict_id}")
    saved = station.mark_wrong(verdict_id, correction.correct, who(request))
    return {"saved": str(saved)}


@router.post("/bundle", summary="Upload a bundle (.tar.gz or .zip of its folder); activated only if it verifies")
def upload_bundle(request: Request, file: UploadFile) -> dict:
    """Unpacked into the station's data folder, then handed to the station, which verifies the
    manifest and every hash before swapping it in between two parts; a bad bundle changes nothing."""
    station = request.app.state.station
    uploads = Path(station.config.station.data_dir) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=uploads))
    try:
        limit = int(request.app.state.access.settings.max_upload_mb * 4 * 2**20)  # unpacked
        root = extract_bundle(file.file, staging, limit)
        result = station.activate_bundle(root, who(request))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(uploads, keep=KEEP_UPLOADS)
    return {"activated": result}


KEEP_UPLOADS = 3  # the active upload and two before it; older unpacked uploads only fill the disk


def _prune(uploads: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest unpacked uploads (the models in use are in memory)."""
    staged = sorted((p for p in uploads.glob("bundle-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in staged[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@router.post("/bundle/rollback", summary="Go back to the previous bundle (audited)")
def rollback_bundle(request: Request) -> dict:
    return {"activated": request.app.state.station.rollback_bundle(who(request))}
