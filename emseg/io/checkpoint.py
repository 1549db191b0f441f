"""The one reader of checkpoint files for the whole package.

Evaluation, prediction, export, resuming and the benchmarks all read checkpoints through
:func:`read_checkpoint`, so every unreadable file ends in the same one-line error.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from emseg.errors import ConfigError, require_file

__all__ = ["CheckpointError", "new_checkpoint_path", "read_checkpoint"]


class CheckpointError(ConfigError):
    """A ``ckpt_path`` that is missing, unreadable, or not written by emseg's ``train.py``."""


def read_checkpoint(
    path: str | Path, label: str = "ckpt_path", weights_only: bool = True
) -> dict[str, Any]:
    """Read a Lightning checkpoint (memory-mapped) and check that it has a ``state_dict``.

    Args:
        path: the ``.ckpt`` file.
        label: the config key the path came from, put first in error messages.
        weights_only: refuse pickled objects other than tensors and plain data (a checkpoint
            is untrusted data; emseg's own hold nothing else).

    Returns:
        The checkpoint dictionary; its tensors are memory-mapped from the file (zip
        checkpoints), so only what is used is read, not the optimizer state (3x the weights).

    Raises:
        CheckpointError: missing, empty, unreadable, or not a Lightning checkpoint.
    """
    path = Path(path)
    require_file(path, CheckpointError, label=label)
    try:
        mmap = zipfile.is_zipfile(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except Exception as err:  # zip, pickle and unpickling-policy errors all mean "unreadable"
        reason = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        # torch's UnpicklingError message suggests unsafe loading; a file that is not a zip is
        # read by the legacy unpickler, whose errors on junk bytes (IndexError, EOFError, ...)
        # depend on the bytes: both mean the same to the user.
        if isinstance(err, pickle.UnpicklingError) or not mmap:
            reason = "corrupt, or holds objects other than tensors and plain data"
        raise CheckpointError(
            f"{label}: {path} is not a readable PyTorch checkpoint ({reason})"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{label}: {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def resolve_checkpoint_path(path: str | Path, label: str = "ckpt_path") -> Path:
    """A checkpoint file, or a training run directory standing for its best checkpoint.

    ``<run>/`` means ``<run>/checkpoints/best-*.ckpt`` (the validation-chosen checkpoint
    ``train.py`` keeps); there must be exactly one.

    Raises:
        CheckpointError: a directory without exactly one best checkpoint.
    """
    path = Path(str(path))
    if not path.is_dir():
        return path
    best = sorted((path / "checkpoints").glob("best-*.ckpt"))
    if len(best) != 1:
        found = ", ".join(p.name for p in best) or "none"
        raise CheckpointError(
            f"{label}: {path} is a directory; expected one checkpoints/best-*.ckpt in it "
            f"(found {found}); give the checkpoint file instead"
        )
    return best[0]


def new_checkpoint_path(
    path: str | Path, writer: str, label: str = "output_ckpt", other: str = ""
) -> Path:
    """``path`` checked as a checkpoint file ``writer`` may create: it must not exist (nothing is
    ever replaced), its directory must, and it ends in ``.ckpt``. ``other`` is a further way
    out the "exists" error offers (e.g. choose.py's "leave output_ckpt unset ...").

    Raises:
        ConfigError: naming ``label`` and what is wrong.
    """
    target = Path(str(path))
    if target.exists():
        raise ConfigError(
            f"{label}: {target} exists; {writer} writes a new file and replaces nothing "
            f"(remove it, name another{other})"
        )
    if not target.parent.is_dir():
        raise ConfigError(f"{label}: the directory {target.parent} does not exist")
    if target.suffix != ".ckpt":
        raise ConfigError(f"{label}: {target} must end in .ckpt (a Lightning checkpoint)")
    return target
