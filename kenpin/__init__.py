"""kenpin (検品): edge visual inspection. The ``kenpin`` command lives in :mod:`kenpin.cli`."""

__version__ = "0.1.0"
