"""Optional post-processing of predictions (numpy/scipy only, no training code).

Both operations stream over Z so they can follow :class:`~emseg.inference.VolumePredictor`
on volumes that do not fit in memory, and both give exactly the whole-volume result:

* :func:`median_filter_slices`: a ``(size_z, size_y, size_x)`` median over the probabilities
  (volume borders extended by their nearest value, like
  ``scipy.ndimage.median_filter(mode="nearest")``); :func:`median_voxels` turns an extent in
  nanometres into such a footprint for a voxel size, so anisotropic data gets fewer slices;
* :func:`remove_small_components`: drop 3D connected components of a binary mask smaller than
  ``min_size`` voxels. Two passes over the slices: the first labels each slice in 2D and links
  labels that touch across neighbouring slices (a graph whose connected components are the 3D
  components), the second relabels each slice and keeps the large components. Only one or two
  slices and one integer per 2D component are held in memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from emseg.errors import ConfigError

__all__ = [
    "Footprint",
    "PostprocessSettings",
    "median_filter_slices",
    "median_filter_volume",
    "median_voxels",
    "median_above",
    "remove_small_components",
    "remove_small_components_slices",
]


# A median footprint in voxels per axis, (Z, Y, X): odd sides; (1, 1, 1) = off.
Footprint = tuple[int, int, int]
OFF: Footprint = (1, 1, 1)


def _is_list(value: Any) -> bool:
    """Whether a setting is given per axis (a list / tuple / ListConfig), not as one number."""
    return isinstance(value, Iterable) and not isinstance(value, str | bytes)


def _per_axis(value: Any, key: str, kind: type) -> tuple:
    """A scalar or a ``[z, y, x]`` list as a 3-tuple of ``kind``."""
    items = list(value) if _is_list(value) else [value] * 3
    if len(items) != 3:
        raise ConfigError(f"{key} must be one number or three (z, y, x), got {value!r}")
    try:
        return tuple(kind(v) for v in items)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key} must be numbers, got {value!r}") from err


def median_voxels(extent_nm: Any, voxel_size: Sequence[float] | None) -> Footprint:
    """The median footprint in voxels of an extent in nanometres.

    Args:
        extent_nm: the filter's full extent in nm, one number (the same on every axis) or
            ``(z, y, x)``.
        voxel_size: ``(z, y, x)`` nm per voxel.

    Returns:
        Per axis the odd number of voxels nearest to ``extent / voxel size`` (ties round up),
        at least 1: ``median_voxels(35, (50, 5, 5)) == (1, 7, 7)``.

    Raises:
        ConfigError: no voxel size, or a non-positive extent / voxel size.
    """
    if extent_nm is None:
        raise ConfigError("postprocess.median_nm is not set")
    extent = _per_axis(extent_nm, "postprocess.median_nm", float)
    if not all(math.isfinite(e) and e > 0 for e in extent):
        raise ConfigError(f"postprocess.median_nm must be positive nanometres, got {extent_nm!r}")
    if voxel_size is None:
        raise ConfigError(
            "postprocess.median_nm is an extent in nanometres, but no voxel size is known: "
            "neither the checkpoint's data.voxel_size nor the input volume records one; "
            "train with data.voxel_size=[z,y,x] or give postprocess.median_size (voxels)"
        )
    voxel = _per_axis(voxel_size, "voxel_size", float)
    if not all(math.isfinite(v) and v > 0 for v in voxel):
        raise ConfigError(f"voxel size must be positive nanometres, got {voxel_size!r}")
    sides = (2 * math.floor(e / v / 2) + 1 for e, v in zip(extent, voxel, strict=True))
    return tuple(max(1, side) for side in sides)  # type: ignore[return-value]


def footprint_of(size: int | Sequence[int]) -> Footprint:
    """``median_size`` as a per-axis footprint: ``n`` -> ``(n, n, n)``, ``0`` / ``1`` -> off.

    Raises:
        ConfigError: an even side, or a negative one.
    """
    sides = _per_axis(size, "postprocess.median_size", int)
    if not _is_list(size) and sides[0] == 0:
        return OFF
    if any(side < 1 or side % 2 == 0 for side in sides):
        raise ConfigError(
            "postprocess.median_size must be 0 (off), an odd window side or three odd sides "
            f"[z, y, x], got {size!r}"
        )
    return sides  # type: ignore[return-value]


@dataclass(frozen=True)
class PostprocessSettings:
    """Post-processing of the probabilities (``conf/postprocess``; defaults: everything off).

    Attributes:
        median_size: a 3D median filter over the probabilities, in voxels: 0 = off, an odd
            side (``n x n x n``, for isotropic data) or three odd sides ``[z, y, x]``.
        min_size: remove 3D connected components of the binary mask smaller than this many
            voxels (0 = off).
        connectivity: neighbourhood of those components: 1 = 6 face neighbours, 2 = 18, 3 = 26.
        median_nm: the median's extent in nanometres instead (one number or ``[z, y, x]``),
            turned into odd voxel counts per axis with the voxel size (:func:`median_voxels`);
            ``None`` = use ``median_size``. Only one of the two may be set.
    """

    median_size: int | Sequence[int] = 0
    min_size: int = 0
    connectivity: int = 1
    median_nm: float | Sequence[float] | None = None

    def __post_init__(self) -> None:
        footprint_of(self.median_size)  # validates
        if _is_list(self.median_size):
            object.__setattr__(self, "median_size", [int(v) for v in self.median_size])
        if self.median_nm is not None:
            median_voxels(self.median_nm, (1.0, 1.0, 1.0))  # validates the extent
            if footprint_of(self.median_size) != OFF:
                raise ConfigError(
                    "postprocess.median_size and postprocess.median_nm both give the median "
                    "filter: set one of them (the other to 0 / null)"
                )
            nm = self.median_nm
            object.__setattr__(
                self, "median_nm", [float(v) for v in nm] if _is_list(nm) else float(nm)
            )
        if int(self.min_size) < 0:
            raise ConfigError(f"postprocess.min_size must be >= 0 voxels, got {self.min_size}")
        if int(self.connectivity) not in (1, 2, 3):
            raise ConfigError(
                f"postprocess.connectivity must be 1, 2 or 3, got {self.connectivity}"
            )

    def footprint(self, voxel_size: Sequence[float] | None = None) -> Footprint:
        """The median's ``(Z, Y, X)`` footprint in voxels; ``voxel_size`` (nm, ZYX) is needed
        only for ``median_nm`` (:class:`ConfigError` without it)."""
        if self.median_nm is not None:
            return median_voxels(self.median_nm, voxel_size)
        return footprint_of(self.median_size)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (for metrics.json)."""
        size = self.median_size
        return {
            "median_size": list(size) if isinstance(size, list) else int(size),
            "min_size": int(self.min_size),
            "connectivity": int(self.connectivity),
            "median_nm": self.median_nm,
        }


def _filter_footprint(size: int | Sequence[int]) -> Footprint:
    """The footprint of a median filter's ``size`` argument: a side <= 1 is off; an even or
    negative side is a ValueError (the filters' callers pass validated settings)."""
    if not _is_list(size) and int(size) <= 1:
        return OFF
    try:
        return footprint_of(size)
    except ConfigError as err:
        raise ValueError(f"median size must be odd, got {size}") from err


def median_filter_slices(
    slices: Iterable[np.ndarray],
    size: int | Sequence[int] = 3,
    threads: int = 1,
    first: int = 0,
) -> Iterator[np.ndarray]:
    """Stream a 3D median filter over ``(Y, X)`` slices in z order.

    Args:
        slices: float ``(Y, X)`` probability slices, all of one shape.
        size: odd window side (``size x size x size``) or odd sides ``(z, y, x)``; a footprint
            of one voxel (``size <= 1``) passes the slices through unchanged.
        threads: blocks of rows filtered in parallel (eval.py / predict.py pass torch's
            intra-op thread count).
        first: the first centre to filter and yield; slices before it are only neighbours
            (a blockwise block's z context, filtered by the block that owns them).

    Yields:
        The filtered slices (float32), one per input slice, equal to
        ``scipy.ndimage.median_filter(volume, size, mode="nearest")``. At most ``size_z``
        slices are held.
    """
    footprint = _filter_footprint(size)
    if footprint == OFF:
        yield from itertools.islice(slices, int(first), None)
        return
    radius = footprint[0] // 2
    held: dict[int, np.ndarray] = {}
    done = int(first)  # the next centre (earlier ones are not filtered)
    count = 0
    for z, item in enumerate(slices):
        if z >= done - radius:  # a neighbour of a centre still to filter
            held[z] = item
        count = z + 1
        while done + radius <= z:  # the next centre has all its neighbours
            yield _median_centre(held, done, footprint, None, threads)
            done += 1
            held.pop(done - radius - 1, None)
    while done < count:  # the last centres see the last slice repeated (none if first >= count)
        yield _median_centre(held, done, footprint, count - 1, threads)
        done += 1


# Elements of shifted copies the median holds per block of rows (64 MB of float32).
MEDIAN_BLOCK_ELEMENTS = 2**24


def _median_centre(
    held: dict[int, np.ndarray],
    centre: int,
    footprint: Footprint,
    last: int | None,
    threads: int = 1,
) -> np.ndarray:
    """The filtered slice ``centre``; neighbours beyond the ends repeat the end slices."""
    rz, ry, rx = (side // 2 for side in footprint)
    high = centre + rz if last is None else last
    indices = np.clip(np.arange(centre - rz, centre + rz + 1), 0, high)
    stack = np.stack([held[int(i)] for i in indices]).astype(np.float32, copy=False)
    padded = np.pad(stack, ((0, 0), (ry, ry), (rx, rx)), mode="edge")
    height, width = stack.shape[1:]
    out = np.empty((height, width), np.float32)
    # The median of the size_z * size_y * size_x shifted copies (an odd count), a few rows at
    # a time (MEDIAN_BLOCK_ELEMENTS): faster than scipy.ndimage.median_filter on the stack,
    # which would filter every slice of it, not only the centre. np.partition releases the
    # GIL, so blocks of rows run on ``threads`` threads (timings: experiments/quality/README.md).
    count = int(np.prod(footprint))
    rows = max(1, MEDIAN_BLOCK_ELEMENTS // (count * width))

    def median_of_rows(y0: int) -> None:
        y1 = min(height, y0 + rows)
        shifted = [
            padded[z, y0 + dy : y1 + dy, dx : dx + width]
            for z in range(footprint[0])
            for dy in range(footprint[1])
            for dx in range(footprint[2])
        ]
        out[y0:y1] = np.partition(np.stack(shifted), count // 2, axis=0)[count // 2]

    starts = range(0, height, rows)
    workers = min(len(starts), max(1, int(threads)))
    if workers <= 1:
        for y0 in starts:
            median_of_rows(y0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(median_of_rows, starts))
    return out


def median_filter_volume(
    volume: np.ndarray, size: int | Sequence[int] = 3, threads: int = 1
) -> np.ndarray:
    """Whole-volume version of :func:`median_filter_slices` for a ``(Z, Y, X)`` array."""
    return np.stack(list(median_filter_slices(iter(volume), size, threads)))


def median_above(volume: np.ndarray, size: int | Sequence[int], threshold: float) -> np.ndarray:
    """``median_filter_volume(volume, size) > threshold`` of a ``(Z, Y, X)`` array, without
    computing the median.

    The median of an odd number n of values is above ``threshold`` exactly when at least
    (n + 1) / 2 of them are (threshold decomposition), so the thresholded median is a majority
    vote of ``volume > threshold``: one box sum (``scipy.ndimage.uniform_filter``, borders
    extended by their nearest value as the median extends them) instead of a partition of n
    values per voxel. The settings search scores every median at every threshold this way:
    for an 11³ footprint ~1000x fewer operations per voxel than the median (search timings,
    old and new, on one checkpoint: experiments/quality/lucchipp_fast_2h_resnet18_2026-12-07.md).
    The probabilities themselves still need the median.

    Returns:
        Boolean ``(Z, Y, X)``.
    """
    footprint = _filter_footprint(size)
    above = np.asarray(volume) > threshold
    if footprint == OFF:
        return above
    # The share of voxels above, as float32: k / n is at least 1 / (2n) from 0.5 (n odd, k an
    # integer), far above float32's rounding of the box sums.
    share = ndimage.uniform_filter(above.astype(np.float32), footprint, mode="nearest")
    return share > 0.5


def _structures(connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    if connectivity not in (1, 2, 3):
        raise ValueError(
            f"connectivity must be 1 (faces), 2 (edges) or 3 (corners), got {connectivity}"
        )
    structure = ndimage.generate_binary_structure(3, connectivity)
    # In-plane neighbours, and the (dy, dx) offsets of the neighbours in the previous slice.
    return structure[1], np.argwhere(structure[0]) - 1


def _shifted_pairs(
    previous: np.ndarray, current: np.ndarray, dy: int, dx: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of voxels ``current[y, x]`` and ``previous[y + dy, x + dx]``, both foreground."""
    height, width = current.shape
    cur = current[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    prev = previous[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)]
    both = (cur > 0) & (prev > 0)
    return prev[both], cur[both]


def remove_small_components_slices(
    masks: Callable[[], Iterable[np.ndarray]], min_size: int, connectivity: int = 1
) -> Iterator[np.ndarray]:
    """Stream-remove 3D connected components smaller than ``min_size`` voxels.

    Args:
        masks: called twice, each time returning a fresh iterable of the same boolean or
            {0, 1} ``(Y, X)`` slices in z order (e.g. re-reading a file).
        min_size: smallest component kept, in voxels; ``<= 1`` keeps everything.
        connectivity: 3D neighbourhood as in ``scipy.ndimage.generate_binary_structure``:
            1 = 6 face neighbours, 2 = 18, 3 = 26.

    Yields:
        uint8 ``(Y, X)`` slices in {0, 1}.
    """
    in_plane, offsets = _structures(connectivity)
    if min_size <= 1:
        for mask in masks():
            yield (np.asarray(mask) > 0).astype(np.uint8)
        return
    sizes: list[np.ndarray] = []
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    total = 0
    previous, previous_offset = None, 0
    for mask in masks():  # pass 1: 2D components, their sizes and their links across z
        labels, count = ndimage.label(np.asarray(mask) > 0, structure=in_plane)
        sizes.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
        if previous is not None and count:
            for dy, dx in offsets:
                a, b = _shifted_pairs(previous, labels, int(dy), int(dx))
                if a.size:
                    pairs = np.unique((a.astype(np.int64) << 32) | b.astype(np.int64))
                    sources.append((pairs >> 32) + previous_offset - 1)
                    targets.append((pairs & 0xFFFFFFFF) + total - 1)
        previous, previous_offset = labels, total
        total += count
    keep = np.zeros(total, bool)
    if total:
        edges = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        ends = np.concatenate(targets) if targets else np.zeros(0, np.int64)
        graph = sparse.coo_matrix((np.ones(edges.size, np.int8), (edges, ends)), (total, total))
        _, component = csgraph.connected_components(graph, directed=False)
        voxels = np.bincount(component, weights=np.concatenate(sizes))
        keep = voxels[component] >= min_size
    keep = np.concatenate([[False], keep])  # index 0 = background
    offset = 0
    for mask in masks():  # pass 2: the same 2D labels, keeping large components only
        labels, count = ndimage.label(np.asarray(mask) > 0, structure=in_plane)
        ids = np.where(labels > 0, labels + offset, 0)
        yield keep[ids].astype(np.uint8)
        offset += count


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int = 1) -> np.ndarray:
    """Whole-volume :func:`remove_small_components_slices` for a ``(Z, Y, X)`` mask.

    Returns:
        uint8 ``(Z, Y, X)`` in {0, 1}.
    """
    return np.stack(
        list(remove_small_components_slices(lambda: iter(mask), min_size, connectivity))
    )
