"""What a quality engineer changed at run time — threshold, active bundle — kept across restarts.

A power cut must not quietly undo a threshold change or a bundle swap made from the dashboard.
The values live beside the verdict database as a small JSON file, replaced atomically. They hold
only while the configuration they were made against is unchanged: when plant IT edits
``bundle.path`` or ``decision.threshold`` in the config, the config wins and the overrides go.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("kenpin.station")


@dataclass(frozen=True)
class Overrides:
    """The run-time values, and the config values they replace."""

    config_bundle: str
    config_threshold: float
    bundle: str
    threshold: float


class OverrideFile:
    """``overrides.json`` in the station's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "overrides.json"

    def load(self, config_bundle: Path, config_threshold: float) -> Overrides | None:
        """The saved overrides if they were made against this config, else None (and why, logged)."""
        try:
            ov = Overrides(**json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("%s unreadable (%s); starting from the config's bundle and threshold", self.path, e)
            return None
        if (ov.config_bundle, ov.config_threshold) != (str(config_bundle), config_threshold):
            log.info("config changed since the dashboard's last change: its bundle and threshold win")
            return None
        return ov

    def save(self, ov: Overrides) -> None:
        """Replace the file atomically (write, fsync, rename), so a power cut leaves old or new."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(ov), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
