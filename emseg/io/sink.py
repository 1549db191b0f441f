"""Atomic volume sinks: an output appears under its final name only when it is complete.

A :class:`VolumeSink` writes into a temporary sibling of its path (through
:func:`emseg.io.atomic.atomic_path`, the package's one atomic-write helper) and renames it on
:meth:`~VolumeSink.commit`; :meth:`~VolumeSink.abort`, an exception inside a ``with`` block or
a killed process leave the final name untouched. :func:`check_output_path` refuses outputs that
would overwrite an input or an existing file before any work is done.
"""

from __future__ import annotations

import abc
import contextlib
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from emseg.errors import ConfigError
from emseg.io.atomic import atomic_path
from emseg.io.units import voxel_or_none

__all__ = ["VolumeSink", "check_output_path"]


class _Aborted(Exception):
    """Thrown into the atomic-write context to make it delete the temporary file."""


class VolumeSink(abc.ABC):
    """A ``(Z, Y, X)`` output written block by block along Z, committed as a whole.

    Subclasses implement :meth:`_start` (open :attr:`tmp_path`), :meth:`_append` (one
    ``(Y, X)`` slice) and :meth:`_finish` (close the temporary file). Formats with random
    block access (Zarr) may accept any ``z0``; this base class enforces z order, which every
    format can do.

    Args:
        path: the final file name.
        shape: ``(Z, Y, X)`` of the whole output.
        dtype: numpy dtype of the data.
        ndim: 2 for a single ``(Y, X)`` image (``Z == 1``), 3 for a volume.
        tag: extra part of the temporary name.
        voxel_size: ``(z, y, x)`` in nanometres, written where the format records it (e.g.
            the input's :attr:`~emseg.io.source.VolumeSource.voxel_size`); ``None``: none.
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int, int],
        dtype: np.dtype | str,
        ndim: int = 3,
        tag: str = "",
        voxel_size: tuple[float, float, float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = int(ndim)
        self.voxel_size = voxel_or_none(voxel_size, 1.0) if voxel_size is not None else None
        if voxel_size is not None and self.voxel_size is None:
            raise ValueError(f"{self.path}: voxel_size {voxel_size} is not 3 positive numbers")
        if len(self.shape) != 3 or (self.ndim == 2 and self.shape[0] != 1):
            raise ValueError(f"{self.path}: shape {self.shape} does not fit ndim {self.ndim}")
        self.written = 0
        self._stack = contextlib.ExitStack()
        self.tmp_path = self._stack.enter_context(atomic_path(self.path, tag))
        self._open = True
        try:
            self._start()
        except BaseException:
            self.abort()
            raise

    @abc.abstractmethod
    def _start(self) -> None:
        """Open the temporary file :attr:`tmp_path` for writing."""

    @abc.abstractmethod
    def _append(self, page: np.ndarray) -> None:
        """Write the next ``(Y, X)`` slice."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Close the temporary file."""

    def write(self, block: np.ndarray, z0: int | None = None) -> None:
        """Write ``block`` (``(z, Y, X)`` or one ``(Y, X)`` slice) at ``z0`` (default: next)."""
        if not self._open:
            raise RuntimeError(f"{self.path}: the sink is closed")
        block = block[None] if block.ndim == 2 else block
        if block.shape[1:] != self.shape[1:] or block.dtype != self.dtype:
            raise ValueError(f"block {block.shape} {block.dtype} does not fit {self.shape}")
        if z0 is not None and z0 != self.written:
            raise ValueError(f"{self.path}: slices are written in z order; next is {self.written}")
        if self.written + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: more than {self.shape[0]} slices")
        for page in block:
            self._append(page)
            self.written += 1

    def close(self) -> None:
        """Finish the temporary file, checking that every slice was written (not committed)."""
        if self._open:
            self._open = False
            self._finish()
            if self.written != self.shape[0]:
                raise RuntimeError(f"{self.tmp_path}: {self.written} of {self.shape[0]} slices")

    def commit(self) -> None:
        """Close and rename the temporary file over ``path``."""
        self.close()
        self._stack.close()

    def abort(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):  # also when _start failed half-way
                self._finish()
        self._stack.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> VolumeSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # no-op after commit (the temporary file is gone)


def check_output_path(path: Path, key: str, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse outputs in missing directories, over inputs, or over existing files.

    Raises:
        ConfigError: naming ``key`` (the config key of the output) and the problem.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{key}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a directory; give a file name such as out.tif")
    for other in inputs:
        if other.exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise ConfigError(f"{key}: {path} is also an input; choose another file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{key}: {path} already exists; pass overwrite=true to replace it")
    check_writable_directory(path.parent, key)


def check_writable_directory(directory: Path, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless a file can be created in ``directory``."""
    try:  # root ignores permission bits: only trying tells whether the directory is writable
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {directory} ({err.strerror})") from err
