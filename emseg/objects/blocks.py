"""The per-block steps of blockwise instances: fragments, their contacts, the merge, the relabel.

A volume too large for memory is cut into blocks (``(z, y, x)`` boxes that tile it). Each block
is labelled on its own (3D connected components: *fragments*); fragments of different blocks
that touch across a block face are the same object. The steps, all on ``(Z, Y, X)`` arrays:

1. :func:`label_block`: the fragments of one block, as volume-unique uint64 ids
   (``block_index << 32 | local id``, so that no merge table is needed to tell blocks apart),
   with each fragment's size, first voxel (in the whole volume's raster order) and box;
2. :func:`face_pairs`: the pairs of fragment ids that touch across one block face (two voxel
   planes, one on each side), for the neighbourhood of the components (6 / 18 / 26);
3. :func:`merge_fragments`: union-find over all pairs (scipy's ``connected_components`` of the
   contact graph), objects smaller than ``min_size`` dropped, the rest numbered ``1..N`` in the
   order of their first voxel: the order :func:`scipy.ndimage.label` gives the same volume in
   memory, so that both paths give the same ids;
4. :func:`relabel_block`: one block's fragments mapped to the objects' ids.

The engine that runs them over worker processes is :mod:`emseg.objects.blockwise`. Written
here because none of scipy / scikit-image / daisy labels across blocks (daisy schedules blocks;
funlib's and waterz' equivalents need C++ builds and a database).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "FRAGMENT_BITS",
    "FragmentStats",
    "Merged",
    "face_pairs",
    "label_block",
    "merge_fragments",
    "relabel_block",
]

# Local ids of a block occupy the low 32 bits of a fragment id, its index the high 32.
FRAGMENT_BITS = 32


@dataclass
class FragmentStats:
    """The fragments of one block (one row each, in id order).

    Attributes:
        ids: ``(n,)`` uint64 volume-unique fragment ids.
        sizes: ``(n,)`` int64 voxel counts.
        first: ``(n,)`` int64 raster index (``(z * Y + y) * X + x``) of each fragment's first
            voxel in the whole volume.
        boxes: ``(n, 6)`` int64 ``z0, y0, x0, z1, y1, x1`` in the volume, stops exclusive.
    """

    ids: np.ndarray
    sizes: np.ndarray
    first: np.ndarray
    boxes: np.ndarray

    def as_arrays(self) -> dict[str, np.ndarray]:
        """For ``np.savez``."""
        return {"ids": self.ids, "sizes": self.sizes, "first": self.first, "boxes": self.boxes}


def label_block(
    mask: np.ndarray,
    block_index: int,
    origin: Sequence[int],
    volume_shape: Sequence[int],
    connectivity: int = 1,
) -> tuple[np.ndarray, FragmentStats]:
    """The fragments of one block.

    Args:
        mask: ``(z, y, x)`` bool foreground of the block.
        block_index: the block's index in the plan (the fragment ids' high bits).
        origin: ``(z0, y0, x0)`` of the block in the volume.
        volume_shape: ``(Z, Y, X)`` of the whole volume.
        connectivity: 1 / 2 / 3 = 6 / 18 / 26 neighbours.

    Returns:
        ``(fragments, stats)``: ``(z, y, x)`` uint64 ids (0 = background) and their
        :class:`FragmentStats`.
    """
    if mask.size >= 2**FRAGMENT_BITS:
        raise ValueError(f"a block of {mask.size} voxels is too large (at most 2**32 - 1)")
    structure = ndimage.generate_binary_structure(3, int(connectivity))
    local, count = ndimage.label(mask, structure)
    base = np.uint64(int(block_index) << FRAGMENT_BITS)
    fragments = np.where(local > 0, local.astype(np.uint64) + base, np.uint64(0))
    if count == 0:
        empty = np.zeros(0, np.int64)
        return fragments, FragmentStats(
            np.zeros(0, np.uint64), empty, empty, np.zeros((0, 6), np.int64)
        )
    flat = local.ravel()
    sizes = np.bincount(flat, minlength=count + 1)[1:].astype(np.int64)
    # The first voxel of each label in the block's raster order is also its first in the
    # volume's: a translation keeps the (z, y, x) lexicographic order.
    values, first_local = np.unique(flat, return_index=True)
    first_local = first_local[values > 0]
    zyx = np.stack(np.unravel_index(first_local, mask.shape), axis=1) + np.asarray(origin)
    first = np.ravel_multi_index(tuple(zyx.T), tuple(int(s) for s in volume_shape))
    boxes = np.asarray(
        [[s.start for s in box] + [s.stop for s in box] for box in ndimage.find_objects(local)],
        dtype=np.int64,
    )
    boxes += np.tile(np.asarray(origin, dtype=np.int64), 2)
    ids = np.arange(1, count + 1, dtype=np.uint64) + base
    return fragments, FragmentStats(ids, sizes, first.astype(np.int64), boxes)


def _offsets(connectivity: int) -> list[tuple[int, int]]:
    """Offsets in the two in-plane axes of a neighbour across a face, for the connectivity
    (6: straight across; 18: also one axis sideways; 26: also diagonally)."""
    steps = (-1, 0, 1)
    return [(a, b) for a in steps for b in steps if abs(a) + abs(b) + 1 <= int(connectivity)]


def face_pairs(slab: np.ndarray, axis: int, connectivity: int = 1) -> np.ndarray:
    """The fragment pairs that touch across a face.

    Args:
        slab: ``(Z, Y, X)`` uint64 fragment ids, exactly 2 voxels thick along ``axis`` (one
            plane on each side of the face); with ``connectivity`` > 1 it also holds one voxel
            beyond the face's ends in the other two axes where the volume has them.
        axis: 0 / 1 / 2, the axis the face is normal to.
        connectivity: 1 / 2 / 3.

    Returns:
        ``(k, 2)`` uint64 unique pairs ``(a, b)`` with ``a < b``.
    """
    if slab.shape[axis] != 2:
        raise ValueError(f"a face slab is 2 voxels thick along axis {axis}, got {slab.shape}")
    lower, upper = (np.take(slab, i, axis=axis) for i in (0, 1))
    height, width = lower.shape
    found = []
    for dy, dx in _offsets(connectivity):
        # lower[y, x] touches upper[y + dy, x + dx]
        a = lower[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        b = upper[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)]
        touching = (a > 0) & (b > 0) & (a != b)
        if touching.any():
            found.append(np.stack([a[touching], b[touching]], axis=1))
    if not found:
        return np.zeros((0, 2), np.uint64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0).astype(np.uint64)


@dataclass
class Merged:
    """The objects of the whole volume, merged from the fragments of every block.

    Attributes:
        ids: ``(n,)`` sorted uint64 fragment ids.
        final: ``(n,)`` the object id of each fragment (0 = dropped as too small); uint32, or
            uint64 past 2**32 - 1 objects.
        sizes: ``(N,)`` int64 voxel counts of objects ``1..N``.
        first: ``(N,)`` int64 raster index of each object's first voxel (ascending).
        boxes: ``(N, 6)`` int64 boxes of the objects.
    """

    ids: np.ndarray
    final: np.ndarray
    sizes: np.ndarray
    first: np.ndarray
    boxes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.sizes)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """For ``np.savez``."""
        return {
            "ids": self.ids,
            "final": self.final,
            "sizes": self.sizes,
            "first": self.first,
            "boxes": self.boxes,
        }


def merge_fragments(
    stats: Sequence[FragmentStats], pairs: Sequence[np.ndarray], min_size: int = 0
) -> Merged:
    """Objects from the blocks' fragments and their contacts (see the module docstring).

    Args:
        stats: every block's :class:`FragmentStats`.
        pairs: every face's touching fragment pairs (:func:`face_pairs`).
        min_size: objects smaller than this many voxels are dropped (``final`` 0).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.concatenate([s.ids for s in stats]) if stats else np.zeros(0, np.uint64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    sizes = np.concatenate([s.sizes for s in stats])[order] if len(ids) else np.zeros(0, np.int64)
    first = np.concatenate([s.first for s in stats])[order] if len(ids) else sizes
    boxes = (
        np.concatenate([s.boxes for s in stats])[order] if len(ids) else np.zeros((0, 6), np.int64)
    )
    n = len(ids)
    if n == 0:
        return Merged(ids, np.zeros(0, np.uint32), sizes, first, boxes)
    edges = np.concatenate(pairs) if len(pairs) else np.zeros((0, 2), np.uint64)
    a, b = np.searchsorted(ids, edges[:, 0]), np.searchsorted(ids, edges[:, 1])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    object_sizes = np.bincount(component, weights=sizes, minlength=count).astype(np.int64)
    object_first = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(object_first, component, first)
    low = np.full((count, 3), np.iinfo(np.int64).max, np.int64)
    high = np.full((count, 3), -1, np.int64)
    np.minimum.at(low, component, boxes[:, :3])
    np.maximum.at(high, component, boxes[:, 3:])
    kept = np.flatnonzero(object_sizes >= int(min_size))
    kept = kept[np.argsort(object_first[kept], kind="stable")]
    dtype = np.uint32 if len(kept) < 2**32 else np.uint64
    number = np.zeros(count, dtype)
    number[kept] = np.arange(1, len(kept) + 1, dtype=dtype)
    return Merged(
        ids,
        number[component],
        object_sizes[kept],
        object_first[kept],
        np.concatenate([low[kept], high[kept]], axis=1),
    )


def relabel_block(fragments: np.ndarray, ids: np.ndarray, final: np.ndarray) -> np.ndarray:
    """One block's fragments (``(z, y, x)`` uint64) as object ids (``final``'s dtype), through
    the merge's sorted ``ids`` -> ``final`` table; 0 stays 0."""
    out = np.zeros(fragments.shape, final.dtype)
    foreground = fragments > 0
    if foreground.any():
        out[foreground] = final[np.searchsorted(ids, fragments[foreground])]
    return out
