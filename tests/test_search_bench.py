"""`kenpin bench search`: the station's exact search beside the libraries', on the same patches."""
from __future__ import annotations

import sys

import numpy as np

from device.bench.search_libraries import largest_difference, searches
from kenpin.cli import main


def _brute_force(bank: np.ndarray, patches: np.ndarray) -> np.ndarray:
    return np.sqrt(((patches[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1)).min(1)


def test_every_search_offered_finds_each_patchs_nearest_bank_row():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 48)).astype(np.float32)
    patches = np.concatenate([bank[:5] + 0.1, rng.normal(size=(60, 48))]).astype(np.float32)
    found, _ = searches(bank)
    for name, search in found.items():
        np.testing.assert_allclose(search(patches), _brute_force(bank, patches), rtol=1e-4, atol=1e-3, err_msg=name)
    station = found["station (numpy GEMM)"]
    assert largest_difference(station, station, [patches]) == 0.0
    assert largest_difference(lambda p: station(p) + 0.5, station, [patches]) > 0.0


def test_bench_search_times_the_station_and_names_a_missing_library(tiny_line, tiny_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "usearch", None)  # as where it is not installed: an ImportError
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    assert main(["bench", "search", "--bundle", str(tiny_bundle), "--data", str(tiny_line), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "bank rows" in out and "station (numpy GEMM)" in out and " ms " in out
    assert "usearch" in out and "not installed (pip install usearch)" in out
