"""Metric learning of the patch embedder (``kenpin train-embedding``), triplet or contrastive.

``pair_sampling`` says where positives and negatives come from, ``batches`` builds the training
batches, ``losses`` composes a distance, a miner and a reducer, ``model`` is the trained embedder
and ``train`` the trainer that selects it on validation. Its product is a checkpoint that
``export.build`` turns into a bundle exactly like the frozen embedder.
"""
