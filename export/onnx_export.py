"""The patch embedder as an ONNX graph the station runs."""
from __future__ import annotations

from pathlib import Path

import onnx
import torch

INPUT_NAME = "image"
OUTPUT_NAME = "patches"


def export_embedder(model: torch.nn.Module, path: Path, height: int, width: int) -> None:
    """Export ``model`` (Nx3xHxW → NxCxhxw) with a dynamic batch axis, opset 17, and check it."""
    model.eval()
    dummy = torch.zeros(1, 3, height, width)
    # The TorchScript exporter (dynamo=False) gives plain Conv/Clip graphs that quantize cleanly
    # and needs no onnxscript at run time.
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))
