"""Read and validate EM volumes and their binary masks.

Every check happens once, at load time, so that the training loop never meets a bad array, and
every failure is one :class:`~emseg.errors.DataError` sentence naming the file and the problem.
Axes are always ``(Z, Y, X)``; a single 2D image is read as a volume with one slice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from emseg.errors import DataError, require_file

__all__ = ["read_volume", "read_mask", "read_pair", "tifffile_errors", "to_unit_float"]

_SUPPORTED_IMAGE_DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.float16)


@contextlib.contextmanager
def tifffile_errors() -> Iterator[list[str]]:
    """Collect the messages tifffile logs at ERROR level while the block runs.

    tifffile does not raise on a broken page chain (e.g. a truncated multi-page file): it logs
    an error and returns the pages it could read. A logging config (e.g. Hydra's job logging)
    may have disabled its logger: it is re-enabled for the block, or no record would arrive.
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


def _read_tiff(path: str | Path) -> np.ndarray:
    path = Path(path)
    require_file(path, DataError)
    with tifffile_errors() as errors:
        try:
            array = tifffile.imread(path)
        except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError) as err:
            raise DataError(f"{path}: not a readable TIFF ({err})") from err
        except Exception as err:  # corrupt compressed strips surface as codec-specific errors
            raise DataError(f"{path}: corrupt TIFF data ({type(err).__name__}: {err})") from err
    if errors:
        raise DataError(f"{path}: corrupt or truncated TIFF ({errors[0]})")
    return np.asarray(array)


class _ErrorRecords(logging.Handler):
    """Collects the messages of ERROR (and worse) log records."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _as_zyx(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] in (3, 4):  # (Y, X, 3|4) is RGB(A), not a volume
        hint = (
            " (looks like RGB/multi-channel; convert it to grayscale)"
            if array.shape[-1]
            in (
                3,
                4,
            )
            else ""
        )
        raise DataError(
            f"{path}: {what} must be 2D (Y, X) or 3D (Z, Y, X), got shape {array.shape}{hint}"
        )
    if 0 in array.shape:
        raise DataError(f"{path}: {what} is empty, shape {array.shape}")
    return array


def read_volume(path: str | Path) -> np.ndarray:
    """Read a grayscale EM image or volume.

    Args:
        path: a 2D or 3D TIFF.

    Returns:
        ``(Z, Y, X)`` array of dtype uint8, uint16 or float (unchanged values).

    Raises:
        DataError: missing/empty/corrupt file, wrong dimensionality, unsupported dtype,
            or NaN/Inf in float data.
    """
    path = Path(path)
    volume = _as_zyx(_read_tiff(path), path, "image")
    if volume.dtype.type not in _SUPPORTED_IMAGE_DTYPES:
        raise DataError(
            f"{path}: unsupported image dtype {volume.dtype}; expected uint8, uint16 or float"
        )
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise DataError(f"{path}: image contains NaN or Inf values")
    return volume


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask stored as {0, 1} or {0, 255}.

    Returns:
        ``(Z, Y, X)`` uint8 array with values in {0, 1}.

    Raises:
        DataError: unreadable file, wrong dimensionality or dtype, or values other than
            {0, 1} / {0, 255}.
    """
    path = Path(path)
    mask = _as_zyx(_read_tiff(path), path, "mask")
    if mask.dtype not in (np.uint8, np.bool_):
        raise DataError(f"{path}: mask dtype must be uint8 or bool, got {mask.dtype}")
    mask = mask.view(np.uint8)
    counts = np.bincount(mask.ravel(), minlength=256)
    values = set(np.flatnonzero(counts).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:8]
        raise DataError(f"{path}: mask must hold only {{0, 1}} or {{0, 255}}, found values {shown}")
    return (mask > 0).astype(np.uint8)


def read_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image volume and its mask, checking that their shapes agree."""
    image = read_volume(image_path)
    mask = read_mask(mask_path)
    if image.shape != mask.shape:
        raise DataError(
            f"image {image_path} has shape {image.shape} but mask {mask_path} has shape "
            f"{mask.shape}; they must match"
        )
    return image, mask


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """Scale integer images to [0, 1] by their dtype's range; float images pass through.

    Returns float32.
    """
    if array.dtype.kind in "ui":
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    return array.astype(np.float32, copy=False)
