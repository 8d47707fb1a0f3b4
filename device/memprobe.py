"""Peak memory of the station runtime alone: ``python -m device.memprobe BUNDLE IMAGE...``.

Run as its own process so the figure excludes training-side libraries; prints one JSON line.
"""
from __future__ import annotations

import json
import resource
import sys

from device.images import read_rgb
from device.runtime import Inspector


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's VmHWM belongs to the process image; ``ru_maxrss`` survives fork+exec and would
    report the (much larger) parent that launched us.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
    bundle, precision, images = argv[0], argv[1], argv[2:]
    inspector = Inspector.open(bundle, precision)
    for path in images:
        inspector.inspect(read_rgb(path), with_heatmap=True)
    peak_mb = peak_rss_mb()
    print(json.dumps({"peak_rss_mb": round(peak_mb, 1), "torch_loaded": "torch" in sys.modules, "images": len(images)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
