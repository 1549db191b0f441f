"""Optional post-processing of predictions (numpy/scipy only, no training code).

Both operations stream over Z so they can follow :class:`~emseg.inference.VolumePredictor`
on volumes that do not fit in memory, and both give exactly the whole-volume result:

* :func:`median_filter_slices`: a ``size^3`` median over the probabilities (volume borders
  extended by their nearest value, like ``scipy.ndimage.median_filter(mode="nearest")``);
* :func:`remove_small_components`: drop 3D connected components of a binary mask smaller than
  ``min_size`` voxels. Two passes over the slices: the first labels each slice in 2D and links
  labels that touch across neighbouring slices (a graph whose connected components are the 3D
  components), the second relabels each slice and keeps the large components. Only one or two
  slices and one integer per 2D component are held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from emseg.errors import ConfigError

__all__ = [
    "PostprocessSettings",
    "median_filter_slices",
    "median_filter_volume",
    "remove_small_components",
    "remove_small_components_slices",
]


@dataclass(frozen=True)
class PostprocessSettings:
    """Post-processing of the probabilities (``conf/postprocess``; defaults: everything off).

    Attributes:
        median_size: side of a 3D median filter over the probabilities: 0 = off, else odd.
        min_size: remove 3D connected components of the binary mask smaller than this many
            voxels (0 = off).
        connectivity: neighbourhood of those components: 1 = 6 face neighbours, 2 = 18, 3 = 26.
    """

    median_size: int = 0
    min_size: int = 0
    connectivity: int = 1

    def __post_init__(self) -> None:
        size = int(self.median_size)
        if size < 0 or (size > 1 and size % 2 == 0):
            raise ConfigError(
                f"postprocess.median_size must be 0 (off) or an odd window side, got {size}"
            )
        if int(self.min_size) < 0:
            raise ConfigError(f"postprocess.min_size must be >= 0 voxels, got {self.min_size}")
        if int(self.connectivity) not in (1, 2, 3):
            raise ConfigError(
                f"postprocess.connectivity must be 1, 2 or 3, got {self.connectivity}"
            )

    def as_dict(self) -> dict[str, int]:
        """The settings as plain integers (for metrics.json)."""
        return {key: int(value) for key, value in asdict(self).items()}


def median_filter_slices(
    slices: Iterable[np.ndarray], size: int = 3, threads: int = 1
) -> Iterator[np.ndarray]:
    """Stream a ``size x size x size`` median filter over ``(Y, X)`` slices in z order.

    Args:
        slices: float ``(Y, X)`` probability slices, all of one shape.
        size: odd window side; ``size <= 1`` passes the slices through unchanged.
        threads: blocks of rows filtered in parallel (eval.py / predict.py pass torch's
            intra-op thread count).

    Yields:
        The filtered slices (float32), one per input slice. At most ``size`` slices are held.
    """
    if size <= 1:
        yield from slices
        return
    if size % 2 == 0:
        raise ValueError(f"median size must be odd, got {size}")
    radius = size // 2
    held: dict[int, np.ndarray] = {}
    done = 0  # slices emitted so far = the next centre
    count = 0
    for z, item in enumerate(slices):
        held[z] = item
        count = z + 1
        while done + radius <= z:  # the next centre has all its neighbours
            yield _median_centre(held, done, radius, None, threads)
            done += 1
            held.pop(done - radius - 1, None)
    while done < count:  # the last centres see the last slice repeated
        yield _median_centre(held, done, radius, count - 1, threads)
        done += 1


# Elements of shifted copies the median holds per block of rows (64 MB of float32).
MEDIAN_BLOCK_ELEMENTS = 2**24


def _median_centre(
    held: dict[int, np.ndarray], centre: int, radius: int, last: int | None, threads: int = 1
) -> np.ndarray:
    """The filtered slice ``centre``; neighbours beyond the ends repeat the end slices."""
    high = centre + radius if last is None else last
    indices = np.clip(np.arange(centre - radius, centre + radius + 1), 0, high)
    stack = np.stack([held[int(i)] for i in indices]).astype(np.float32, copy=False)
    size = 2 * radius + 1
    padded = np.pad(stack, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    height, width = stack.shape[1:]
    out = np.empty((height, width), np.float32)
    # The median of the size^3 shifted copies, a few rows at a time (MEDIAN_BLOCK_ELEMENTS):
    # faster than scipy.ndimage.median_filter on the stack, which would filter every slice of
    # it, not only the centre. np.partition releases the GIL, so blocks of rows run on
    # ``threads`` threads (timings: experiments/quality/README.md).
    rows = max(1, MEDIAN_BLOCK_ELEMENTS // (size**3 * width))

    def median_of_rows(y0: int) -> None:
        y1 = min(height, y0 + rows)
        shifted = [
            padded[z, y0 + dy : y1 + dy, dx : dx + width]
            for z in range(size)
            for dy in range(size)
            for dx in range(size)
        ]
        out[y0:y1] = np.partition(np.stack(shifted), size**3 // 2, axis=0)[size**3 // 2]

    starts = range(0, height, rows)
    workers = min(len(starts), max(1, int(threads)))
    if workers <= 1:
        for y0 in starts:
            median_of_rows(y0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(median_of_rows, starts))
    return out


def median_filter_volume(volume: np.ndarray, size: int = 3, threads: int = 1) -> np.ndarray:
    """Whole-volume version of :func:`median_filter_slices` for a ``(Z, Y, X)`` array."""
    return np.stack(list(median_filter_slices(iter(volume), size, threads)))


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
