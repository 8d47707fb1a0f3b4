"""Writing a bundle atomically: build in a temp dir beside the target, verify, then rename."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device.bundle import MANIFEST, SCHEMA, bundle_id_of, load_bundle, manifest_digest, schema_version_for, sha256_file


def write_bundle(out_dir: Path, staged: Path, body: dict[str, Any]) -> Path:
    """Turn the files in ``staged`` (a temp dir next to ``out_dir``) into the bundle ``out_dir``.

    The manifest gets every file's SHA-256 and a bundle id derived from them; the bundle is
    verified with the station's own loader before it replaces whatever was at ``out_dir``, so a
    failure at any point leaves no half-written bundle.
    """
    files = {p.name: sha256_file(p) for p in sorted(staged.iterdir()) if p.is_file() and p.name != MANIFEST}
    bundle_id = bundle_id_of(files)
    manifest = {
        "schema": SCHEMA,
        "schema_version": schema_version_for(body),
        "bundle_id": bundle_id,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **body,
        "files": files,
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    load_bundle(staged)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staged, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def staging_dir(out_dir: Path) -> Path:
    """A fresh temp dir on the same filesystem as ``out_dir`` (so the final rename is atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    return staged
