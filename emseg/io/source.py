"""Lazy volume sources: shape, dtype and voxel size known on open; data read by block.

A :class:`VolumeSource` is what training, inference and evaluation read from, whatever the file
format behind it. Axes are always ``(Z, Y, X)``; a 2D image is a source of one slice (``ndim``
keeps the file's own dimensionality, so outputs can keep the input's shape). Every check of an
image's dimensionality, dtype and values happens here, once, for every format
(:func:`check_image_layout`, :func:`check_finite`), and every failure is one
:class:`~emseg.errors.DataError` sentence naming the file and the problem.

A new format is one subclass implementing :meth:`VolumeSource._read_block` and
:meth:`VolumeSource.close`, registered in :mod:`emseg.io.formats`.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from emseg.errors import DataError

__all__ = [
    "IMAGE_DTYPES",
    "LABEL_DTYPES",
    "MASK_DTYPES",
    "VolumeSource",
    "ZRange",
    "check_dtype",
    "check_finite",
    "check_image_layout",
]

# Grayscale EM data: 8/16-bit integers (scaled by their dtype maximum) or floats in [0, 1].
IMAGE_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)
# Binary masks: {0, 1} or {0, 255} in uint8, or bool.
MASK_DTYPES = (np.uint8, np.bool_)
# Labels: masks, or instance label images (integer ids; emseg.data.labels converts them).
LABEL_DTYPES = (
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
)
Index = int | slice


def check_dtype(dtype: np.dtype, path: Path, what: str = "image") -> None:
    """Raise :class:`DataError` unless ``dtype`` suits an ``image``, a ``mask`` or ``labels``."""
    allowed = {"image": IMAGE_DTYPES, "mask": MASK_DTYPES, "labels": LABEL_DTYPES}[what]
    if np.dtype(dtype).type not in allowed:
        expected = {
            "image": "uint8, uint16 or float",
            "mask": "uint8 or bool",
            "labels": "bool or integers (a mask or instance ids)",
        }[what]
        raise DataError(f"{path}: unsupported {what} dtype {np.dtype(dtype)}; expected {expected}")


def check_image_layout(
    shape: tuple[int, ...], path: Path, what: str = "image"
) -> tuple[int, int, int]:
    """The ``(Z, Y, X)`` shape of a 2D or 3D grayscale array, or one :class:`DataError`.

    ``(Y, X, 3|4)`` is RGB(A), not a volume (a ``(3|4, Y, X)`` stack is a volume).

    Args:
        shape: the stored array's shape.
        path: the file, for the message.
        what: ``image`` or ``mask``, for the message.
    """
    shape = tuple(int(s) for s in shape)
    rgb = len(shape) == 3 and shape[-1] in (3, 4)
    if len(shape) not in (2, 3) or rgb:
        hint = " (looks like RGB/multi-channel; convert it to grayscale)" if rgb else ""
        raise DataError(
            f"{path}: {what} must be 2D (Y, X) or 3D (Z, Y, X), got shape {shape}{hint}"
        )
    if 0 in shape:
        raise DataError(f"{path}: {what} is empty, shape {shape}")
    return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]


def check_finite(block: np.ndarray, path: Path, where: str = "") -> np.ndarray:
    """Return ``block`` unless it is float data with NaN or Inf values (then :class:`DataError`)."""
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise DataError(f"{path}: {where or 'image'} contains NaN or Inf values")
    return block


class VolumeSource(abc.ABC):
    """A ``(Z, Y, X)`` grayscale volume on disk, read lazily.

    Attributes:
        path: the file (or store) it reads.
        shape: ``(Z, Y, X)``.
        dtype: the stored dtype (checked by :func:`emseg.io.open_volume` for its use).
        ndim: 2 for a single image, 3 for a volume (the file's own dimensionality).
        voxel_size: ``(z, y, x)`` in nanometres when the file records it, else ``None``.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        voxel_size: tuple[float, float, float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.ndim = len(shape)
        self.dtype = np.dtype(dtype)
        self.shape: tuple[int, int, int] = check_image_layout(shape, self.path)
        self.voxel_size = voxel_size

    @abc.abstractmethod
    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """The stored ``(z, y, x)`` block (bounds already checked and normalised)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def read(self, z: Index = slice(None), y: Index = slice(None), x: Index = slice(None)):
        """Read a block: ``source.read(slice(10, 20))`` is slices 10-19, ``(10, Y, X)``.

        Integer indices drop their axis, as in numpy. Steps other than 1 are not supported
        (blocks are contiguous on disk).

        Returns:
            The block in the stored dtype; float data is checked for NaN / Inf.
        """
        bounds = [
            self._bounds(index, size, axis)
            for index, size, axis in zip((z, y, x), self.shape, "zyx", strict=True)
        ]
        block = self._read_block(*(b for b, _ in bounds))
        drop = tuple(axis for axis, (_, scalar) in enumerate(bounds) if scalar)
        block = np.squeeze(block, axis=drop) if drop else block
        where = f"slice {z}" if isinstance(z, int) else ""
        return check_finite(block, self.path, where)

    def _bounds(self, index: Index, size: int, axis: str) -> tuple[slice, bool]:
        if isinstance(index, int | np.integer):
            position = int(index)
            if not -size <= position < size:
                raise IndexError(f"{axis}={position} out of range for {size} ({self.path})")
            position %= size
            return slice(position, position + 1), True
        start, stop, step = index.indices(size)
        if step != 1:
            raise ValueError(f"{axis}: only contiguous blocks can be read, got step {step}")
        return slice(start, max(start, stop)), False

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        """Slice ``z`` as ``(Y, X)`` (what 2.5D inference streams)."""
        return self.read(z)

    def z_range(self, start: int = 0, stop: int | None = None) -> ZRange:
        """A lazy view of slices ``start .. stop - 1`` (clipped to the volume)."""
        first, last, _ = slice(start, stop).indices(self.shape[0])
        return ZRange(self, first, max(first, last))

    def __enter__(self) -> VolumeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class ZRange:
    """Slices ``start .. stop - 1`` of a :class:`VolumeSource`, read lazily (a z-range view).

    Indexable by slice like the source (``view[0]`` is ``source[start]``), so it can be
    streamed through inference in place of the whole volume.
    """

    def __init__(self, source: VolumeSource, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, int(start), int(stop)
        self.path, self.dtype = source.path, source.dtype
        self.shape = (self.stop - self.start, *source.shape[1:])

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, z: int) -> np.ndarray:
        if not 0 <= z < len(self):
            raise IndexError(f"slice {z} out of range for {len(self)} slices")
        return self.source.read(self.start + z)

    def read(self) -> np.ndarray:
        """The whole view as a ``(Z, Y, X)`` array."""
        return self.source.read(slice(self.start, self.stop))
