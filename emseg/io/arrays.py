"""Whole volumes as arrays, for data that fits in memory (training volumes, test labels).

Built on :func:`emseg.io.open_volume`, so a whole-array read and a streamed read of the same
file pass the same checks. Axes are ``(Z, Y, X)``; a 2D image is one slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emseg.errors import DataError
from emseg.io.formats import open_volume

__all__ = ["read_image", "read_mask", "read_pair"]


def read_image(path: str | Path) -> np.ndarray:
    """Read a grayscale EM image or volume: ``(Z, Y, X)`` uint8 / uint16 / float, unchanged.

    Raises:
        DataError: missing / empty / corrupt file, wrong dimensionality or dtype, NaN / Inf.
    """
    with open_volume(path, "image") as source:
        return source.read()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask stored as {0, 1} or {0, 255}: ``(Z, Y, X)`` uint8 in {0, 1}.

    Raises:
        DataError: unreadable file, wrong dimensionality or dtype, or other values.
    """
    with open_volume(path, "mask") as source:
        mask = source.read().view(np.uint8)
    counts = np.bincount(mask.ravel(), minlength=256)
    values = set(np.flatnonzero(counts).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:8]
        raise DataError(f"{path}: mask must hold only {{0, 1}} or {{0, 255}}, found values {shown}")
    return (mask > 0).astype(np.uint8)


def read_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image volume and its mask, checking that their shapes agree."""
    image = read_image(image_path)
    mask = read_mask(mask_path)
    if image.shape != mask.shape:
        raise DataError(
            f"image {image_path} has shape {image.shape} but mask {mask_path} has shape "
            f"{mask.shape}; they must match"
        )
    return image, mask
