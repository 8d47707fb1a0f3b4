"""Uploaded bundle archives: unpacked on every Python the station runs on, nothing outside staging."""
from __future__ import annotations

import io
import tarfile

import pytest

from device.dashboard.archive import extract_bundle
from device.errors import BundleError


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    buf.seek(0)
    return buf


def _python_3_11_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile as Debian bookworm (Raspberry Pi OS) ships it: no extraction filters."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    plain = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kw):
        if kw:
            raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kw))!r}")
        return plain(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


@pytest.mark.parametrize("old_python", [False, True])
def test_a_bundle_tarball_unpacks(tmp_path, monkeypatch, old_python):
    if old_python:
        _python_3_11_2(monkeypatch)
    fh = _tar([("bundle/manifest.json", b"{}"), ("bundle/bank.npy", b"\x93NUMPY")])
    root = extract_bundle(fh, tmp_path / "staging", max_bytes=1 << 20)
    assert root == tmp_path / "staging" / "bundle"
    assert (root / "bank.npy").read_bytes() == b"\x93NUMPY"


@pytest.mark.parametrize("old_python", [False, True])
def test_links_and_escaping_paths_are_refused(tmp_path, monkeypatch, old_python):
    if old_python:
        _python_3_11_2(monkeypatch)
    link = tarfile.TarInfo("bundle/bank.npy")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for members, words in (([("bundle/manifest.json", b"{}"), link], "not a plain file"),
                           ([("../../manifest.json", b"{}")], "outside its folder"),
                           ([("/tmp/manifest.json", b"{}")], "outside its folder")):
        staging = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        with pytest.raises(BundleError, match=words):
            extract_bundle(_tar(members), staging, max_bytes=1 << 20)
    assert not (tmp_path.parent / "manifest.json").exists()
