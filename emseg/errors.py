"""User-facing errors.

Anything the user can fix (a missing file, a bad shape, a bad config value) raises
:class:`EmsegError` with one sentence naming the file or key and the problem. The entry points
print that sentence alone and exit non-zero instead of showing a traceback.
"""


class EmsegError(Exception):
    """An error caused by the user's input or configuration, with a readable message."""


class DataError(EmsegError):
    """A volume or mask that cannot be used: missing, unreadable, wrong shape, dtype or values."""


class ConfigError(EmsegError):
    """A configuration value outside its valid range."""


class WeightsError(EmsegError):
    """Pretrained encoder weights that cannot be found or loaded."""
