"""TIFF volumes: a lazy page-by-page source and an atomic slice-by-slice sink (tifffile).

tifffile does not raise on every broken file: a truncated multi-page file logs an error about
its page chain and returns the pages it could read. :func:`tifffile_errors` collects those log
records so that such a file is refused with one clear message instead of being read short.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from emseg.errors import DataError, require_file
from emseg.io.sink import VolumeSink
from emseg.io.source import VolumeSource

__all__ = ["TIFF_SUFFIXES", "TiffSink", "TiffSource", "tifffile_errors"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
# Classic TIFF offsets are 32-bit: BigTIFF well before 4 GiB.
_BIGTIFF_BYTES = 2**31
# tifffile's resolution units -> nanometres.
_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micron": 1e3, "mm": 1e6}


class _ErrorRecords(logging.Handler):
    """Collects the messages of ERROR (and worse) log records."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def tifffile_errors() -> Iterator[list[str]]:
    """Collect the messages tifffile logs at ERROR level while the block runs.

    A logging config (e.g. Hydra's job logging) may have disabled tifffile's logger: it is
    re-enabled for the block, or no record would arrive.
    """
    errors = _ErrorRecords()
    tiff_logger = logging.getLogger("tifffile")
    was_disabled, tiff_logger.disabled = tiff_logger.disabled, False
    tiff_logger.addHandler(errors)
    try:
        yield errors.messages
    finally:
        tiff_logger.removeHandler(errors)
        tiff_logger.disabled = was_disabled


@contextlib.contextmanager
def _as_data_error(path: Path, what: str) -> Iterator[None]:
    """Turn anything tifffile or a codec raises into one :class:`DataError` naming ``path``."""
    with tifffile_errors() as errors:
        try:
            yield
        except DataError:
            raise
        except Exception as err:  # tifffile raises many types for broken or non-TIFF data
            raise DataError(f"{path}: {what} ({type(err).__name__}: {err})") from err
    if errors:
        raise DataError(f"{path}: corrupt or truncated TIFF ({errors[0]})")


def _voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """``(z, y, x)`` nanometres from ImageJ metadata (spacing, unit) and the resolution tags."""
    meta = tif.imagej_metadata or {}
    page = tif.pages.first
    unit = str(meta.get("unit", "")).lower()
    tags = page.tags
    if unit not in _UNIT_NM or "XResolution" not in tags or "YResolution" not in tags:
        return None
    scale = _UNIT_NM[unit]
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if not (xn and yn):
        return None
    x, y = scale * xd / xn, scale * yd / yn
    z = scale * float(meta["spacing"]) if "spacing" in meta else y
    return (z, y, x)


def _check_extent(path: Path, series: tifffile.TiffPageSeries, pages: list) -> None:
    """Refuse a file that ends before the image data its header points to (truncated)."""
    size = path.stat().st_size
    ends = [
        offset + count
        for page in pages
        if page is not None
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
    ]
    if series.dataoffset is not None:  # contiguous data: one block for the whole series
        ends.append(int(series.dataoffset) + int(series.nbytes))
    if ends and max(ends) > size:
        raise DataError(
            f"{path}: truncated TIFF: image data extends to byte {max(ends)} but the file has "
            f"{size} bytes"
        )


class TiffSource(VolumeSource):
    """A 2D or 3D grayscale TIFF, read page by page when it is stored one page per slice.

    Other layouts (rare: e.g. one page holding the whole volume) are memory-mapped when
    uncompressed and read whole on first use otherwise.

    Raises:
        DataError: missing, empty, truncated or unreadable file; RGB or >3D data.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        require_file(path, DataError)
        self._tif: tifffile.TiffFile | None = None
        with _as_data_error(path, "not a readable TIFF"):
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            voxel_size = _voxel_size(self._tif)
            pages = list(series.pages)
        try:
            super().__init__(
                path, shape, dtype, voxel_size
            )  # layout first: "empty" over "truncated"
            _check_extent(path, series, pages)
        except DataError:
            self.close()
            raise
        self._pages = pages if len(pages) == self.shape[0] else None
        self._array: np.ndarray | None = None

    def _whole(self) -> np.ndarray:
        if self._array is None:
            with _as_data_error(self.path, "cannot read the image data"):
                try:
                    self._array = tifffile.memmap(self.path, mode="r").reshape(self.shape)
                except ValueError:  # compressed or not contiguous: cannot be memory-mapped
                    log.warning(
                        "%s: slices are not stored page by page; reading it whole", self.path
                    )
                    self._array = self._tif.asarray().reshape(self.shape)
        return self._array

    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        if self._pages is None:
            return np.asarray(self._whole()[z, y, x])
        pages = []
        for index in range(z.start, z.stop):
            with _as_data_error(self.path, f"cannot read slice {index}"):
                page = self._pages[index].asarray()
            pages.append(page.reshape(self.shape[1:])[y, x])
        return np.stack(pages) if pages else np.zeros((0, *self.shape[1:]), self.dtype)[:, y, x]

    def close(self) -> None:
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None


class TiffSink(VolumeSink):
    """Write a TIFF slice by slice in z order; it appears under ``path`` only on :meth:`commit`.

    ``ndim=2`` writes a single ``(Y, X)`` image, 3 a ``(Z, Y, X)`` stack (arguments: see
    :class:`~emseg.io.sink.VolumeSink`). BigTIFF is used for outputs of 2 GiB or more.
    """

    def _start(self) -> None:
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._tif = tifffile.TiffWriter(self.tmp_path, bigtiff=nbytes > _BIGTIFF_BYTES)

    def _append(self, page: np.ndarray) -> None:
        # Contiguous pages form one series; a 3D file of one slice needs its Z axis explicitly.
        data = page[None] if self.ndim == 3 and self.shape[0] == 1 else page
        axes = "ZYX" if self.ndim == 3 else "YX"
        self._tif.write(data, contiguous=True, metadata={"axes": axes})

    def _finish(self) -> None:
        self._tif.close()
