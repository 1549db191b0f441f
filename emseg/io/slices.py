"""A folder or glob of 2D slices as one volume (``slices/``, ``slices/*.tif``).

Files are ordered by natural sort (``z2`` before ``z10``); each is one ``(Y, X)`` slice read
when needed (TIFF by tifffile, PNG / JPEG by Pillow). Every slice must have the first one's
shape and dtype.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np

from emseg.errors import DataError
from emseg.io.source import VolumeSource

__all__ = ["SLICE_SUFFIXES", "SliceFolderSource", "slice_files"]

SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def slice_files(spec: str) -> list[Path]:
    """The slice files of a folder or a glob pattern, in natural order."""
    if any(char in spec for char in "*?["):
        files = [Path(p) for p in glob.glob(spec)]
    else:
        files = [p for p in Path(spec).iterdir() if p.is_file()]
    return sorted((p for p in files if p.suffix.lower() in SLICE_SUFFIXES), key=_natural_key)


def _read_slice(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    except Exception as err:  # codecs raise many types for broken files
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


class SliceFolderSource(VolumeSource):
    """The 2D images of a folder or glob, stacked along Z.

    Raises:
        DataError: no images, or a slice that is not 2D or differs in shape / dtype.
    """

    def __init__(self, spec: str) -> None:
        self.files = slice_files(spec)
        if not self.files:
            raise DataError(
                f"{spec}: no slice images ({', '.join(SLICE_SUFFIXES)}) in this folder / pattern"
            )
        first = self._checked(self.files[0], None)
        super().__init__(Path(spec), (len(self.files), *first.shape), first.dtype)

    def _checked(self, path: Path, like: VolumeSource | None) -> np.ndarray:
        page = _read_slice(path)
        if page.ndim != 2:
            raise DataError(f"{path}: a slice must be a 2D grayscale image, got shape {page.shape}")
        if like is not None and (page.shape != like.shape[1:] or page.dtype != like.dtype):
            raise DataError(
                f"{path}: slice {page.shape} {page.dtype} differs from the first slice "
                f"{like.shape[1:]} {like.dtype} of {like.path}"
            )
        return page

    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        pages = [self._checked(self.files[i], self)[y, x] for i in range(z.start, z.stop)]
        if not pages:
            return np.zeros((0, *self.shape[1:]), self.dtype)[:, y, x]
        return np.stack(pages)

    def close(self) -> None:
        """Nothing is held open between reads."""
