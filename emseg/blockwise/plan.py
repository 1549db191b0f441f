"""How a volume (or its region of interest) is cut into blocks aligned to the store's chunks.

A block is the box ``z0 .. z1 - 1, y0 .. y1 - 1, x0 .. x1 - 1`` of the input volume's voxels; the
output store holds the region of interest (``roi``), so block boxes are chunk-aligned relative
to the ROI's first voxel and no two blocks share a chunk. A block is predicted from:

* in z, its read range ``z0 - halo .. z1 - 1 + halo`` (clipped to the *volume*, not the ROI:
  the 2.5D context and the 3D median's z radius, :meth:`emseg.inference.InferencePipeline.z_halo`);
* in y and x, the input under the whole slice's sliding windows that overlap the block grown
  by the median's y / x radius (:mod:`emseg.inference.slice_region`); whole slices when
  ``block_yx`` covers them (the default for slices up to :data:`WHOLE_SLICE_AREA` pixels).

Either way the block equals the same voxels of a single-process prediction of the whole volume.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from emseg.errors import ConfigError

__all__ = ["WHOLE_SLICE_AREA", "Block", "BlockPlan", "block_yx_of"]

# blockwise.block_yx=auto keeps whole slices up to this many pixels (16 slices of 4096^2 float32
# are 1 GiB per block); larger slices are cut into tiles of AUTO_TILE (rounded to chunks).
WHOLE_SLICE_AREA = 4096 * 4096
AUTO_TILE = 2048

# (z0, z1, y0, y1, x0, x1), stops exclusive, in the input volume's voxels.
Block = tuple[int, int, int, int, int, int]


def block_yx_of(
    setting: object, slice_shape: Sequence[int], chunks_yx: Sequence[int]
) -> tuple[int, int]:
    """The ``(y, x)`` size of the blocks from ``blockwise.block_yx``.

    Args:
        setting: ``auto`` (whole slices up to :data:`WHOLE_SLICE_AREA` pixels, else tiles of
            :data:`AUTO_TILE`), ``null`` (whole slices), one size, or ``[y, x]``.
        slice_shape: ``(Y, X)`` of the region of interest.
        chunks_yx: the store's chunk ``(y, x)``; a tile is rounded up to a multiple of it.

    Raises:
        ConfigError: a size that is not a positive integer, or a pair of the wrong length.
    """
    height, width = (int(s) for s in slice_shape)
    if setting is None or (setting == "auto" and height * width <= WHOLE_SLICE_AREA):
        return height, width
    if setting == "auto":
        values: list[object] = [AUTO_TILE, AUTO_TILE]
    elif isinstance(setting, int):
        values = [setting, setting]
    elif isinstance(setting, Sequence) and not isinstance(setting, str) and len(setting) == 2:
        values = list(setting)
    else:
        values = []
    if len(values) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ConfigError(
            f"blockwise.block_yx must be auto, null, a positive size or [y, x], got {setting!r}"
        )
    rounded = [-(-int(v) // int(c)) * int(c) for v, c in zip(values, chunks_yx, strict=True)]
    return min(rounded[0], height), min(rounded[1], width)


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of a region of interest of a ``(Z, Y, X)`` volume.

    Attributes:
        volume: the volume's ``(Z, Y, X)`` (the z halo is clipped to it).
        block_slices: slices per block (a multiple of ``chunk_z``).
        chunk_z: the output chunks' z size.
        halo: slices read beyond each side of a block (clipped to the volume).
        roi: ``((z0, z1), (y0, y1), (x0, x1))`` to predict; ``None``: the whole volume.
        block_yx: ``(y, x)`` block size (multiples of the chunks, or the ROI's extent);
            ``None``: whole slices of the ROI.
    """

    volume: tuple[int, int, int]
    block_slices: int
    chunk_z: int = 1
    halo: int = 0
    roi: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    block_yx: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if int(self.block_slices) < 1 or int(self.block_slices) % int(self.chunk_z):
            raise ConfigError(
                f"blockwise.block_slices must be a positive multiple of the chunks' z size "
                f"{self.chunk_z}, got {self.block_slices}"
            )
        volume = tuple(int(s) for s in self.volume)
        if len(volume) != 3 or min(volume) < 1 or int(self.halo) < 0:
            raise ValueError(f"volume {self.volume} and halo {self.halo} must be >= 1 and >= 0")
        object.__setattr__(self, "volume", volume)
        roi = self.roi or tuple((0, s) for s in volume)
        object.__setattr__(self, "roi", tuple((int(a), int(b)) for a, b in roi))
        (_, _), (y0, y1), (x0, x1) = self.roi
        yx = self.block_yx or (y1 - y0, x1 - x0)
        object.__setattr__(self, "block_yx", (int(yx[0]), int(yx[1])))

    @property
    def depth(self) -> int:
        """The volume's ``Z``."""
        return self.volume[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` extent of the region of interest."""
        return tuple(b - a for a, b in self.roi)  # type: ignore[return-value]

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` of a full block (the last ones along each axis may be smaller)."""
        return (int(self.block_slices), *self.block_yx)  # type: ignore[return-value]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Blocks along z, y and x."""
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        nz, ny, nx = self.grid
        return nz * ny * nx

    def __iter__(self) -> Iterator[Block]:
        """The blocks in z, then y, then x order (daisy's grid order, the skip mask's)."""
        starts = [
            range(a, b, size) for (a, b), size in zip(self.roi, self.block_shape, strict=True)
        ]
        for z0, y0, x0 in itertools.product(*starts):
            (_, z_end), (_, y_end), (_, x_end) = self.roi
            yield (
                z0,
                min(z_end, z0 + self.block_shape[0]),
                y0,
                min(y_end, y0 + self.block_shape[1]),
                x0,
                min(x_end, x0 + self.block_shape[2]),
            )

    def read_range(self, z0: int, z1: int) -> tuple[int, int]:
        """The slices ``(r0, r1)`` (``r1`` exclusive) that block ``z0 .. z1 - 1`` reads."""
        return max(0, z0 - self.halo), min(self.depth, z1 + self.halo)

    def whole_slices(self) -> bool:
        """Whether every block spans the region's full y and x extent."""
        return self.grid[1:] == (1, 1)
