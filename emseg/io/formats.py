"""Which class reads or writes a volume, chosen from its string: the one place formats are named.

A volume is named by one string wherever a volume is asked for:

* ``vol.tif`` / ``vol.tiff``: a 2D or multi-page TIFF;
* ``file.h5:path/to/dataset`` (also ``.hdf5``, ``.hdf``; the key may be left out when the file
  holds one dataset);
* ``store.zarr/path/to/array`` (Zarr v2 or v3; an OME-Zarr multiscale group means its level 0);
* ``store.n5/path/to/dataset`` (N5, read by tensorstore; a multiscale group means its ``s0``);
* ``slices/`` or ``slices/*.png``: a folder or glob of 2D slices, in natural order.

A new format is one :class:`~emseg.io.source.VolumeSource` (and
:class:`~emseg.io.sink.VolumeSink`) added here; training, inference and evaluation only call
:func:`open_volume` and :func:`create_sink`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from emseg.errors import DataError, require_file
from emseg.io.arrays_on_disk import HDF5Source, ZarrSource
from emseg.io.n5 import N5Source
from emseg.io.sink import VolumeSink
from emseg.io.slices import SliceFolderSource
from emseg.io.source import VolumeSource, check_dtype
from emseg.io.tiff import TIFF_SUFFIXES, TiffSink, TiffSource

__all__ = ["SINKS", "SOURCES", "create_sink", "open_volume", "parse_volume"]

_HDF5 = re.compile(r"^(?P<file>.*\.(?:h5|hdf5|hdf))(?::(?P<key>.*))?$", re.IGNORECASE)

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


def parse_volume(spec: str | Path) -> tuple[str, Path, str]:
    """``(kind, file, key)`` of a volume string: kind ``hdf5`` | ``zarr`` | ``n5`` | ``slices``
    | ``file``.

    ``file`` is what must exist on disk (the HDF5 file, the Zarr or N5 store, the folder),
    ``key`` the array inside it (empty for the root / the only dataset).
    """
    text = str(spec)
    match = _HDF5.match(text)
    if match:
        return "hdf5", Path(match["file"]), (match["key"] or "").strip("/")
    parts = Path(text).parts
    for index, part in enumerate(parts):
        for suffix in (".zarr", ".n5"):
            if part.lower().endswith(suffix):
                return suffix[1:], Path(*parts[: index + 1]), "/".join(parts[index + 1 :])
    if any(char in text for char in "*?[") or Path(text).is_dir():
        return "slices", Path(text), ""
    return "file", Path(text), ""


def _open_source(spec: str | Path) -> VolumeSource:
    kind, path, key = parse_volume(spec)
    if kind == "slices":
        return SliceFolderSource(str(spec))
    if kind in ("zarr", "n5"):
        if not path.exists():
            raise DataError(f"{path}: {'Zarr' if kind == 'zarr' else 'N5'} store not found")
        return (ZarrSource if kind == "zarr" else N5Source)(path, key)
    require_file(path, DataError)  # a missing file or a directory says so, whatever its name
    if kind == "hdf5":
        return HDF5Source(path, key)
    return SOURCES[_suffix(path, SOURCES, "input")](path)


def open_volume(path: str | Path, what: str = "image") -> VolumeSource:
    """Open a volume (any string of :func:`parse_volume`) lazily and check that it can serve as
    an ``image`` or a ``mask``.

    Raises:
        DataError: unsupported format, missing / unreadable file or array, wrong layout or
            dtype.
    """
    source = _open_source(path)
    try:
        check_dtype(source.dtype, source.path, what)
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
    voxel_size: tuple[float, float, float] | None = None,
) -> VolumeSink:
    """An atomic sink for ``path`` (see :class:`~emseg.io.sink.VolumeSink`); ``voxel_size``
    (``(z, y, x)`` nm, e.g. the input's) is written where the format records it."""
    path = Path(path)
    return SINKS[_suffix(path, SINKS, "output")](path, shape, dtype, ndim, tag, voxel_size)
