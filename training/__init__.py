"""The GPU side of kenpin: datasets, embeddings, reference bank, calibration, synthetic data."""
