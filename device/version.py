"""The installed kenpin's version, from its package metadata: the one place that reads it.

The command line (``kenpin.__version__``), the station's status and the dashboard all report this.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "kenpin"


def kenpin_version() -> str:
    """The version of the installed ``kenpin`` distribution; ``0+unknown`` in a tree never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
