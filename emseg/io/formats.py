"""Which class reads or writes a volume, chosen from its path: the one place formats are named.

A new format (HDF5 ``f.h5:raw``, Zarr ``s.zarr/raw``, a folder of slices) is one
:class:`~emseg.io.source.VolumeSource` / :class:`~emseg.io.sink.VolumeSink` pair registered in
:data:`SOURCES` / :data:`SINKS`; training, inference and evaluation only call
:func:`open_volume` and :func:`create_sink`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emseg.errors import DataError, require_file
from emseg.io.sink import VolumeSink
from emseg.io.source import VolumeSource, check_dtype
from emseg.io.tiff import TIFF_SUFFIXES, TiffSink, TiffSource

__all__ = ["SINKS", "SOURCES", "create_sink", "open_volume"]

SOURCES: dict[str, type[VolumeSource]] = dict.fromkeys(TIFF_SUFFIXES, TiffSource)
SINKS: dict[str, type[VolumeSink]] = dict.fromkeys(TIFF_SUFFIXES, TiffSink)


def _suffix(path: Path, registry: dict, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in registry:
        raise DataError(
            f"{path}: unsupported {what} format {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(sorted(registry))}"
        )
    return suffix


def open_volume(path: str | Path, what: str = "image") -> VolumeSource:
    """Open a volume lazily and check that it can serve as an ``image`` or a ``mask``.

    Raises:
        DataError: unsupported format, missing / unreadable file, wrong layout or dtype.
    """
    path = Path(path)
    require_file(path, DataError)  # a missing file or a directory says so, whatever its name
    source = SOURCES[_suffix(path, SOURCES, "input")](path)
    try:
        check_dtype(source.dtype, path, what)
    except DataError:
        source.close()
        raise
    return source


def create_sink(
    path: str | Path,
    shape: tuple[int, int, int],
    dtype: np.dtype | str,
    ndim: int = 3,
    tag: str = "",
) -> VolumeSink:
    """An atomic sink for ``path`` (see :class:`~emseg.io.sink.VolumeSink`)."""
    path = Path(path)
    return SINKS[_suffix(path, SINKS, "output")](path, shape, dtype, ndim, tag)
