"""kenpin station runtime: everything that runs on the Pi. Never imports torch.

It owns the runtime contract (preprocessing, bundle format, scoring) that ``training`` and
``export`` import, so training and serving cannot drift apart.
"""
