"""kenpin (検品): edge visual inspection. The ``kenpin`` command lives in :mod:`kenpin.cli`."""

from device.version import kenpin_version

__version__ = kenpin_version()
