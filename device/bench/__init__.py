"""Measuring the station: helpers and benchmarks that, like the rest of ``device/``, never import torch."""
