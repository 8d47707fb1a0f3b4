"""A quiet console: onnxruntime's quantizer notes ("Increased scale[i] for weight …", ~190 per
bundle) stay off the console of `kenpin train` / `scripts/demo.sh` and are kept at DEBUG."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.quantize import quantize_int8

NOTE = "Increased scale"


def conv_with_a_dead_channel(path: Path) -> Path:
    """One 3x3 Conv whose second output channel has ~zero weights but a bias of 1: its int8
    weight scale is too small for the int32 bias, so the quantizer raises it and logs the note
    a real backbone gets ~190 of."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    weight[1] = 1e-9
    conv = helper.make_node("Conv", [INPUT_NAME, "w", "b"], [OUTPUT_NAME], name="conv0", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv], "dead-channel",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads, whatever onnx would write
    onnx.save(model, str(path))
    return path


def test_quantizer_notes_stay_off_an_info_console(tmp_path, caplog, capsys):
    model = conv_with_a_dead_channel(tmp_path / "fp32.onnx")
    calib = np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32)
    # The console of `kenpin train`: a stream handler on the root logger at INFO (kenpin.cli's
    # logging.basicConfig). caplog also records the DEBUG lines the notes are moved to.
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="export.quantize")
    logging.getLogger().addHandler(handler)
    try:
        quantize_int8(model, tmp_path / "int8.onnx", calib, "MinMax")
    finally:
        logging.getLogger().removeHandler(handler)
    notes = [r for r in caplog.records if NOTE in r.getMessage()]
    assert notes, "the dead channel should make onnxruntime log its note (else this test proves nothing)"
    assert all(r.levelno == logging.DEBUG and r.name == "export.quantize" for r in notes)  # kenpin -v shows them
    assert NOTE not in console.getvalue()
    out, err = capsys.readouterr()
    assert NOTE not in out and NOTE not in err
    assert (tmp_path / "int8.onnx").is_file()


def test_the_root_logger_is_left_as_it_was(tmp_path):
    before = list(logging.getLogger().filters)
    model = conv_with_a_dead_channel(tmp_path / "fp32.onnx")
    quantize_int8(model, tmp_path / "int8.onnx", np.ones((2, 3, 16, 16), np.float32), "MinMax")
    assert logging.getLogger().filters == before
