"""User-facing errors.

Anything the user can fix (a missing file, a bad shape, a bad config value) raises
:class:`EmsegError` with one sentence naming the file or key and the problem. The entry points
print that sentence alone and exit non-zero instead of showing a traceback.
"""

from pathlib import Path


class EmsegError(Exception):
    """An error caused by the user's input or configuration, with a readable message."""


class DataError(EmsegError):
    """A volume or mask that cannot be used: missing, unreadable, wrong shape, dtype or values."""


class ConfigError(EmsegError):
    """A configuration value outside its valid range."""


class WeightsError(EmsegError):
    """Pretrained encoder weights that cannot be found or loaded."""


def require_file(path: Path, error: type[EmsegError] = EmsegError, label: str = "") -> None:
    """Raise ``error`` naming ``path`` unless it is an existing, non-empty file.

    Args:
        path: the file the user gave.
        error: the :class:`EmsegError` subclass to raise.
        label: the config key the path came from (e.g. ``ckpt_path``), put first in the message.
    """
    prefix = f"{label}: " if label else ""
    if not path.exists():
        raise error(f"{prefix}{path}: file not found")
    if path.is_dir():
        raise error(f"{prefix}{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise error(f"{prefix}{path}: file is empty")


def find_user_error(error: BaseException) -> EmsegError | None:
    """The :class:`EmsegError` behind ``error``, if any.

    Hydra's ``instantiate`` wraps exceptions raised in constructors; the user-facing cause is
    found by following ``__cause__`` / ``__context__``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, EmsegError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
