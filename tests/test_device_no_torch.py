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


def test_the_station_benchmarks_run_without_torch(tiny_line, tiny_bundle, tmp_path):
    """`kenpin bench store` and `kenpin bench profile` run with torch unimportable, as on a Pi, and the
    other station benchmarks (station, dashboard, durability, opcua) load without it."""
    code = "\n".join([
        "import sys",
        "sys.modules['torch'] = None  # any import of torch now fails",
        "from kenpin.cli import main",
        f"assert main(['bench', 'store', '--n', '16', '--size', '32', '--dir', {str(tmp_path)!r}]) == 0",
        f"assert main(['bench', 'profile', '--bundle', {str(tiny_bundle)!r}, '--data', {str(tiny_line)!r}, "
        "'--repeat', '1']) == 0",
        "import device.bench.station, device.bench.dashboard_load, device.bench.dashboard_cost, device.bench.durability",
        "import device.bench.opcua, device.bench.opcua_clients",
    ])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert '"verdicts_per_s"' in out.stdout and "station ÷ bare model" in out.stdout
