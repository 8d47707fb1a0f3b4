"""`kenpin bench station` end to end on the tiny bundle (short runs): the figures it prints."""
from __future__ import annotations

import json
import sys

from kenpin.cli import main
from tests.station_helpers import replay_folder


def test_bench_station_reports_throughput_latency_and_a_lossless_triggered_run(tiny_line, tiny_bundle, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on the Pi: the estimate needs no onnx
    replay = replay_folder(tiny_line, tmp_path / "replay")
    md = tmp_path / "station.md"
    assert main(["bench", "station", "--bundle", str(tiny_bundle), "--replay", str(replay), "--workdir",
                 str(tmp_path / "run"), "--seconds", "3", "--triggered-seconds", "2", "--markdown", str(md)]) == 0
    res = json.loads((tmp_path / "run" / "station-bench.json").read_text())
    assert res["ort_fps"] > 0 and res["pipeline"]["fps"] > 0 and res["pipeline"]["p99_ms"] >= res["pipeline"]["p50_ms"]
    t = res["triggered"]
    assert t["sent"] > 0 and t["lost"] == 0 and t["doubled"] == 0 and t["recorded"] == t["sent"]
    assert t["integrity"] == "ok" and t["max_backlog"] >= 1
    assert res["gmacs"] > 0 and set(res["pi_estimate"]) == {"Raspberry Pi 4", "Raspberry Pi 5"}
    text = md.read_text()
    assert "pipeline / bare ORT" in text and "ESTIMATE" in text


def test_kenpin_bench_for_models_still_parses():
    from kenpin.cli import parser

    args = parser().parse_args(["bench", "--data", "x"])
    assert args.data == ["x"] and args.func.__name__ == "cmd_bench"
