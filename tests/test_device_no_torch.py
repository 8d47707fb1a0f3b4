"""The station must install and run without torch."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_sources_never_import_torch():
    offenders = [p for p in (ROOT / "device").rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())]
    assert offenders == []


def test_loading_the_runtime_does_not_pull_torch_in():
    code = "import sys, device.runtime, device.bundle, device.memprobe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
