"""Errors a person can act on: the message is one sentence naming the file/key/value."""


class KenpinError(Exception):
    """An expected failure: the CLI prints the message (no traceback) and exits non-zero."""


class ImageError(KenpinError):
    """An image file that cannot be read."""


class BundleError(KenpinError):
    """A bundle that is missing, tampered with, or does not match this runtime."""
