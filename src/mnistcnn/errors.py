"""The error family: every failure a user can cause is a MnistCnnError.

`cli.main` prints these as one line and exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MnistCnnError(Exception):
    """A problem with the user's input, files or environment, reported as one line."""


class ConfigError(MnistCnnError):
    """An invalid config file, key, value or override."""


class DataError(MnistCnnError):
    """MNIST files missing, unreadable or corrupt."""


class CheckpointError(MnistCnnError):
    """A model file that cannot be read, trusted or loaded."""


class ImageError(MnistCnnError):
    """An input image that cannot be decoded or holds no digit."""


class TrainingError(MnistCnnError):
    """Training that cannot go on, e.g. a non-finite loss."""


class ExportError(MnistCnnError):
    """An export that cannot be done or whose file disagrees with the source model."""
