"""Helpers for the station tests: a config on the tiny bundle and a replay folder."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from device.station.config import StationConfig, parse_config


def replay_folder(tiny_line: Path, dest: Path, defects: int = 2, goods: int = 4) -> Path:
    """A folder of a few good and a few defective parts from the tiny line, in name order."""
    dest.mkdir(parents=True, exist_ok=True)
    goods_src = sorted((tiny_line / "test" / "good").iterdir())[:goods]
    bad_src = sorted((tiny_line / "test" / "crack").iterdir())[:defects]
    for i, src in enumerate(goods_src + bad_src):
        shutil.copy(src, dest / f"{i:03d}_{src.parent.name}{src.suffix}")
    return dest


def station_config(tmp: Path, bundle: Path, replay: Path, extra: str = "", loop: bool = False,
                   mode: str = "free-run", fps: float = 0) -> StationConfig:
    """A config for an in-process Station: replay source, int8, no dashboard."""
    text = f"""
station: {{name: test-line, data_dir: {tmp / 'data'}}}
bundle: {{path: {bundle}, precision: int8, threads: 1}}
camera:
  type: replay
  replay: {{folder: {replay}, fps: {fps}, loop: {str(loop).lower()}}}
trigger: {{mode: {mode}}}
record: {{ok_image_fraction: 1.0}}
dashboard: {{enabled: false}}
{extra}
"""
    return parse_config(text, "test.yaml")


def service_config_file(tmp: Path, bundle: Path, replay: Path, extra: str = "") -> Path:
    """A station config file for `kenpin run`: looping replay at 50 fps, no dashboard."""
    path = tmp / "station.yaml"
    path.write_text(f"""
station: {{name: svc, data_dir: {tmp / 'data'}}}
bundle: {{path: {bundle}, precision: int8, threads: 1}}
camera: {{type: replay, replay: {{folder: {replay}, fps: 50, loop: true}}}}
dashboard: {{enabled: false}}
{extra}""")
    return path


def wait_for(predicate, timeout: float = 20.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
