"""How a volume is cut into blocks: z ranges of whole slices, aligned to the store's chunks.

A block is the slices ``z0 .. z1 - 1`` of the output (all of y and x); it is predicted from its
read range ``z0 - halo .. z1 - 1 + halo`` (clipped to the volume), where the halo is the 2.5D
context plus the 3D median's z radius (:meth:`emseg.inference.InferencePipeline.z_halo`).
Blocks are not tiled in y and x yet: whole slices keep the sliding window's placement, and so
the result, identical to a single-process prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from emseg.errors import ConfigError

__all__ = ["BlockPlan"]


@dataclass(frozen=True)
class BlockPlan:
    """The z blocks of a ``(Z, Y, X)`` volume.

    Attributes:
        depth: the volume's ``Z``.
        block_slices: slices per block (a multiple of ``chunk_z``; the last block may be
            shorter).
        chunk_z: the output chunks' z size.
        halo: slices read beyond each side of a block.
    """

    depth: int
    block_slices: int
    chunk_z: int = 1
    halo: int = 0

    def __post_init__(self) -> None:
        if int(self.block_slices) < 1 or int(self.block_slices) % int(self.chunk_z):
            raise ConfigError(
                f"blockwise.block_slices must be a positive multiple of the chunks' z size "
                f"{self.chunk_z}, got {self.block_slices}"
            )
        if int(self.depth) < 1 or int(self.halo) < 0:
            raise ValueError(f"depth {self.depth} and halo {self.halo} must be >= 1 and >= 0")

    def __len__(self) -> int:
        return -(-int(self.depth) // int(self.block_slices))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The blocks' ``(z0, z1)`` in z order."""
        for z0 in range(0, self.depth, self.block_slices):
            yield z0, min(self.depth, z0 + self.block_slices)

    def read_range(self, z0: int, z1: int) -> tuple[int, int]:
        """The slices ``(r0, r1)`` (``r1`` exclusive) that block ``z0 .. z1 - 1`` reads."""
        return max(0, z0 - self.halo), min(self.depth, z1 + self.halo)

    def index_of(self, z0: int) -> int:
        """The position of the block starting at ``z0`` in :meth:`__iter__`."""
        return int(z0) // int(self.block_slices)
