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
from emseg.io.units import nm_per_unit, voxel_or_none

__all__ = ["TIFF_SUFFIXES", "TiffSink", "TiffSource", "tifffile_errors"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
# Classic TIFF offsets are 32-bit: BigTIFF well before 4 GiB.
_BIGTIFF_BYTES = 2**31
# TIFF ResolutionUnit tag values with a length -> nanometres: centimetre, and the
# millimetre / micrometre extensions; 1 (none) and 2 (inch, editors' 72 dpi) are not lengths.
_RESOLUTION_UNIT_NM = {3: 1e7, 4: 1e6, 5: 1e3}
# ImageJ reads only these sample types (no float16, no bool, no BigTIFF).
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


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


def _description_metadata(tif: tifffile.TiffFile) -> tuple[dict, bool]:
    """The ImageJ metadata (``True``) or else tifffile's JSON ("shaped") metadata (``False``)."""
    if tif.imagej_metadata:
        return dict(tif.imagej_metadata), True
    shaped = tif.shaped_metadata
    return (dict(shaped[0]) if shaped and isinstance(shaped[0], dict) else {}), False


def _pixels_per_unit(tags: tifffile.TiffTags) -> tuple[float, float] | None:
    """``(x, y)`` resolution in pixels per unit from the XResolution / YResolution tags."""
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if not (xn and xd and yn and yd):
        return None
    return xn / xd, yn / yd


def _voxel_size(tif: tifffile.TiffFile, stack: bool) -> tuple[float, float, float] | None:
    """``(z, y, x)`` nanometres as ImageJ / Fiji read them, or ``None`` when not recorded.

    * x, y: the XResolution / YResolution tags (pixels per unit), in the ``unit`` of the
      ImageJ (or tifffile JSON) description (``nm``, ``micron``, ``\\u00B5m``, ...), or else in
      the standard ResolutionUnit tag when it is centimetre / millimetre / micrometre (never
      inch, the 72 dpi default of image editors, nor "none");
    * z: ``spacing`` in that unit; without it ImageJ's default voxel depth of one ``unit`` for
      an ImageJ stack, ``y`` for a single image, and ``None`` for any other stack (z unknown).
    """
    meta, imagej = _description_metadata(tif)
    tags = tif.pages.first.tags
    per_unit = _pixels_per_unit(tags)
    scale = nm_per_unit(meta.get("unit"))
    if scale is None and "ResolutionUnit" in tags:
        scale = _RESOLUTION_UNIT_NM.get(int(tags["ResolutionUnit"].value))
    if per_unit is None or scale is None:
        return None
    x, y = scale / per_unit[0], scale / per_unit[1]
    if "spacing" in meta:
        z = scale * float(meta["spacing"])
    elif not stack:
        z = y
    elif imagej:
        z = scale
    else:
        return None
    return voxel_or_none((z, y, x), 1.0)


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
            voxel_size = _voxel_size(self._tif, stack=len(series.shape) > 2)
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

    A ``voxel_size`` is written as ImageJ calibration, so that ImageJ / Fiji and
    :class:`TiffSource` show it: XResolution / YResolution in pixels per nm, and an ImageJ
    description with ``unit=nm`` and ``spacing`` (z, nm). ImageJ reads only uint8 / uint16 /
    float32 classic TIFFs; other outputs (float16 probabilities, BigTIFF, a 3D file of one
    slice) record the same ``unit`` and ``spacing`` in tifffile's JSON description instead,
    which :class:`TiffSource` reads too.
    """

    def _start(self) -> None:
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        bigtiff = nbytes > _BIGTIFF_BYTES
        self._tif = tifffile.TiffWriter(self.tmp_path, bigtiff=bigtiff)
        self._imagej = (
            self.voxel_size is not None
            and not bigtiff
            and self.dtype.type in _IMAGEJ_DTYPES
            and (self.ndim == 2 or self.shape[0] > 1)
        )

    def _append(self, page: np.ndarray) -> None:
        # Contiguous pages form one series; a 3D file of one slice needs its Z axis explicitly.
        data = page[None] if self.ndim == 3 and self.shape[0] == 1 else page
        self._tif.write(data, contiguous=True, **self._calibration())

    def _calibration(self) -> dict:
        """tifffile ``write`` arguments: the axes, and the voxel size where there is one."""
        axes = "ZYX" if self.ndim == 3 else "YX"
        if self.voxel_size is None:
            return {"metadata": {"axes": axes}}
        z, y, x = self.voxel_size
        resolution = {"resolution": (1 / x, 1 / y), "resolutionunit": 1}  # pixels per nm
        if not self._imagej:
            return {**resolution, "metadata": {"axes": axes, "unit": "nm", "spacing": z}}
        # Written by hand: tifffile's ImageJ mode cannot stream a stack page by page, and
        # would call an unlabelled stack of 3 or 4 slices channels. Contiguous pages + images=N
        # is ImageJ's own layout.
        lines = ["ImageJ=1.11a"]
        if self.ndim == 3:
            lines += [f"images={self.shape[0]}", f"slices={self.shape[0]}"]
        lines += [f"spacing={z!r}", "unit=nm", "loop=false", ""]
        return {**resolution, "description": "\n".join(lines), "metadata": None}

    def _finish(self) -> None:
        self._tif.close()
