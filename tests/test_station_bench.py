"""`kenpin bench station` end to end on the tiny bundle (short runs): the figures it prints."""
from __future__ import annotations

import json
import sys

import pytest

from kenpin.cli import main
from tests.station_helpers import replay_folder


def test_bench_station_reports_throughput_latency_and_a_lossless_triggered_run(tiny_line, tiny_bundle, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on the Pi: the estimate needs no onnx
    replay = replay_folder(tiny_line, tmp_path / "replay")
    md = tmp_path / "station.md"
    assert main(["bench", "station", "--bundle", str(tiny_bundle), "--replay", str(replay), "--workdir",
                 str(tmp_path / "run"), "--seconds", "3", "--triggered-seconds", "2", "--workers", "2", "--threads", "1",
                 "--markdown", str(md)]) == 0
    res = json.loads((tmp_path / "run" / "station-bench.json").read_text())
    # The baseline is the best bare layout, including the station's own (one session per worker).
    layouts = res["rounds"]["bare"][0]["ort_fps_by_layout"]
    assert any("2 sessions side by side" in k for k in layouts) and res["rounds"]["bare"][0]["ort_fps"] == max(layouts.values())
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


def test_kenpin_bench_table_has_a_cell_under_every_heading():
    pytest.importorskip("torch")  # kenpin bench is the training side's (absent on a Pi)
    from kenpin.bench import markdown

    lat = {k: {"median_ms": v} for k, v in {"torch fp32": 40.0, "ORT fp32": 20.0, "ORT int8": 14.0,
                                            "bare ORT int8 model": 8.0, "int8 bank search": 3.5,
                                            "int8 search + decision": 4.0}.items()}
    figures = {"image_auroc": 0.97, "pixel_auroc": 0.8, "false_reject_rate": 0.01, "escape_rate": 0.3}
    row = {"dataset": "tile", "input": "384x384", "embedding_dim": 64, "latency": lat, "int8": figures, "fp32": figures,
           "global_embedding_auroc_fp32": 0.95, "bundle_mb": 22.9, "int8_only_mb": 5.1,
           "runtime_memory": {"peak_rss_mb": 160.0}}
    header, rule, line = markdown([row]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|")
    assert "| 3.5 | 0.500 | 1.75 |" in line  # search, search + decision ÷ CNN, station ÷ bare model
    assert line.startswith("| tile (64-d, fp32 search) |")
    assert markdown([{**row, "search": "int8"}]).splitlines()[2].startswith("| tile (64-d, int8 search) |")
    del lat["torch fp32"]  # a reduced bundle: torch has no model of its projection
    assert "| 1.43× / n/a |" in markdown([row]).splitlines()[2]


def test_bench_products_prints_the_switch_figures_and_refuses_one_bundle(tiny_line, tiny_bundle, tmp_path, capsys):
    from device.bench.products import product_copy

    replay = replay_folder(tiny_line, tmp_path / "replay")
    other = product_copy(tiny_bundle, tmp_path / "other", "other")
    assert main(["bench", "products", "--bundles", str(tiny_bundle), str(other), "--replay", str(replay),
                 "--switches", "10", "--workdir", str(tmp_path / "run")]) == 0
    res = json.loads((tmp_path / "run" / "products-bench.json").read_text())
    assert res["switches"] == 10 and res["sent"] == res["recorded"] > 0
    assert (res["lost"], res["doubled"], res["wrong_product"], res["wrong_bundle"]) == (0, 0, 0, 0)
    assert "| lost / doubled | 0 / 0 | 0 / 0 |" in capsys.readouterr().out
    assert main(["bench", "products", "--bundles", str(tiny_bundle), "--replay", str(replay)]) == 2
    assert "--bundles: 1 given; switching needs two or more, one per product" in capsys.readouterr().err
