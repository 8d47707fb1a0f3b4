"""Unpacking an uploaded bundle archive safely: no member may land outside the staging folder."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from device.bundle import MANIFEST
from device.errors import BundleError

MAX_MEMBERS = 64  # a bundle has a handful of files; thousands would be an archive bomb


def extract_bundle(fh: BinaryIO, staging: Path, max_bytes: int) -> Path:
    """Unpack a .tar(.gz) or .zip into ``staging``; the folder holding manifest.json is returned.

    ``max_bytes`` bounds the unpacked size (a small upload may inflate enormously)."""
    fh.seek(0)
    if zipfile.is_zipfile(fh):
        fh.seek(0)
        _unzip(fh, staging, max_bytes)
    else:
        fh.seek(0)
        try:
            with tarfile.open(fileobj=fh, mode="r:*") as tar:
                members = tar.getmembers()
                _check_size(len(members), sum(m.size for m in members), max_bytes)
                _check_tar_members(members, staging)
                _extract_tar(tar, staging)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BundleError(f"the uploaded file is neither a .zip nor a .tar(.gz) of a bundle folder ({e})") from None
    return _bundle_root(staging)


def _unzip(fh: BinaryIO, staging: Path, max_bytes: int) -> None:
    base = staging.resolve()
    with zipfile.ZipFile(fh) as z:
        infos = z.infolist()
        _check_size(len(infos), sum(i.file_size for i in infos), max_bytes)
        for info in infos:
            target = (base / info.filename).resolve()
            if base not in target.parents and target != base:
                raise BundleError(f"the uploaded archive has a member outside its folder: {info.filename!r}")
        z.extractall(base)


def _check_tar_members(members: list[tarfile.TarInfo], staging: Path) -> None:
    """A bundle is plain files in folders: links, devices and paths that leave ``staging`` are refused.

    Checked here rather than left to tarfile's ``filter="data"``, which Python 3.11.2 (Debian
    bookworm, hence Raspberry Pi OS) does not have."""
    base = staging.resolve()
    for m in members:
        if not (m.isfile() or m.isdir()):
            raise BundleError(f"the uploaded archive has a member that is not a plain file or folder: {m.name!r}")
        target = (base / m.name).resolve()
        if base not in target.parents and target != base:
            raise BundleError(f"the uploaded archive has a member outside its folder: {m.name!r}")


def _extract_tar(tar: tarfile.TarFile, staging: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # 3.11.4+, 3.12+: also drops odd modes and owners
        tar.extractall(staging, filter="data")
    else:
        tar.extractall(staging)  # members already vetted by _check_tar_members


def _check_size(n: int, total: int, max_bytes: int) -> None:
    if n > MAX_MEMBERS:
        raise BundleError(f"the uploaded archive has {n} files; a bundle has at most {MAX_MEMBERS}")
    if total > max_bytes:
        raise BundleError(f"the uploaded archive unpacks to {total / 2**20:.0f} MB, over the "
                          f"{max_bytes / 2**20:.0f} MB allowed (dashboard.max_upload_mb x 4)")


def _bundle_root(staging: Path) -> Path:
    """The archive may hold the bundle's files directly or inside one top-level folder."""
    if (staging / MANIFEST).is_file():
        return staging
    subdirs = [p for p in staging.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST).is_file():
        return subdirs[0]
    raise BundleError(f"the uploaded archive has no {MANIFEST} at its top or in one top-level folder; "
                      "pack the bundle folder itself (tar czf bundle.tar.gz -C BUNDLE_PARENT BUNDLE)")
