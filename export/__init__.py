"""PyTorch → ONNX, int8 static quantization, parity checks, and writing the bundle."""
