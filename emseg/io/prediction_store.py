"""One chunked OME-Zarr store for a volume's predictions, written block by block in any order.

Unlike a :class:`~emseg.io.sink.VolumeSink` (one writer, z order, renamed into place on commit),
a :class:`PredictionStore` is written by several processes at once, each writing whole blocks
wherever the scheduler sends it. The store holds the predicted region of interest (the whole
input by default); its OME-Zarr ``translation`` places it in the input's coordinates.
Layout (Zarr v3, OME-Zarr 0.5)::

    out.zarr/                     group; attributes["emseg"] = {"complete": bool, "run": {...}}
    out.zarr/probabilities/       OME-Zarr multiscales image (axes z, y, x; nanometer)
    out.zarr/probabilities/0      uint8 round(255 p) (or float16), (Z, Y, X), chunks e.g.
                                  (1, 256, 256)
    out.zarr/mask/0               uint8 0 / 255 (probability above the threshold)
    out.zarr/probabilities/1 ...  optional pyramid levels (``blockwise.pyramid``): y, x
                                  halved per level, written with level 0 by the same block

``out.zarr/probabilities`` is what :func:`emseg.io.open_volume` (and napari / neuroglancer)
opens: its level 0, with the voxel size from the multiscales ``scale``.

Atomicity, from the first byte to the last:

1. :func:`create_prediction_store` writes every metadata document up front (root group, the
   image groups with their multiscales, the arrays), with ``complete: false``;
2. :meth:`PredictionStore.write_block` writes whole chunks only (a block is a box aligned to
   the chunk shape), so no two blocks share a chunk and concurrent writers never touch the
   same file; zarr's local store writes each chunk to a temporary file
   and renames it, so a chunk is old or new, never half. A block is *committed* when its call
   returns (the scheduler records it as done only then);
3. :meth:`PredictionStore.mark_complete` sets ``complete: true`` last. Until then
   :class:`~emseg.io.arrays_on_disk.ZarrSource` refuses to read the store (one error naming
   it), so an interrupted run is never mistaken for a finished volume.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import ConfigError, DataError

__all__ = [
    "ARRAY_NAMES",
    "DEFAULT_CHUNKS",
    "PredictionStore",
    "StoreLayout",
    "check_layout_matches",
    "chunk_aligned",
    "create_prediction_store",
    "ome_multiscales",
    "open_prediction_store",
]

# The arrays a prediction store may hold (each an OME-Zarr image group with level "0").
ARRAY_NAMES = ("probabilities", "mask")
# One slice deep (any z range is whole chunks), 256 x 256 in y, x (~64 KB uint8 each).
DEFAULT_CHUNKS = (1, 256, 256)
# Root attribute key of emseg's own bookkeeping (completion flag, the run's settings).
ATTRS_KEY = "emseg"


@dataclass(frozen=True)
class StoreLayout:
    """What a prediction store holds: compared field by field before a run resumes into it.

    Attributes:
        shape: ``(Z, Y, X)`` of every array.
        chunks: ``(z, y, x)`` chunk shape of every array.
        arrays: array name (:data:`ARRAY_NAMES`) -> numpy dtype name (``"uint8"``...).
        voxel_size: ``(z, y, x)`` nm per voxel, or ``None`` (then scale 1, no unit).
        translation: ``(z, y, x)`` of the first voxel in nm (or voxels without voxel size).
        levels: resolution levels of every array: ``0`` (full) and ``1 .. levels - 1``, each
            half the previous one in y and x (z kept: blocks and chunks are thin in z), with
            chunks halved alike so that a block of level 0 is whole chunks at every level.
    """

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS
    arrays: Mapping[str, str] = field(default_factory=lambda: {"probabilities": "uint8"})
    voxel_size: tuple[float, float, float] | None = None
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    levels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        chunks = tuple(int(c) for c in self.chunks)
        if len(chunks) != 3 or min(chunks) < 1:
            raise ConfigError(
                f"blockwise.chunks must be three positive sizes (z, y, x), got {chunks}"
            )
        # A chunk larger than the volume is clipped to it (zarr would store the padding).
        object.__setattr__(
            self, "chunks", tuple(min(c, s) for c, s in zip(chunks, self.shape, strict=True))
        )
        unknown = set(self.arrays) - set(ARRAY_NAMES)
        if unknown or not self.arrays:
            raise ConfigError(
                f"blockwise.arrays must be some of {', '.join(ARRAY_NAMES)}, got "
                f"{sorted(self.arrays)}"
            )
        object.__setattr__(self, "arrays", {k: str(np.dtype(v)) for k, v in self.arrays.items()})
        if self.voxel_size is not None:
            object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "translation", tuple(float(v) for v in self.translation))
        levels = self.levels
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ConfigError(f"blockwise.pyramid must be >= 0 levels, got {levels!r} - 1")
        factor = 2 ** (levels - 1)
        if any(c % factor for c in self.chunks[1:]):
            raise ConfigError(
                f"blockwise.pyramid={levels - 1}: the chunks' y / x sizes {self.chunks[1:]} "
                f"must be multiples of {factor} (each level halves them)"
            )

    def level_shape(self, level: int) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of resolution ``level`` (y and x halved per level, rounded up)."""
        factor = 2**level
        z, y, x = self.shape
        return z, -(-y // factor), -(-x // factor)

    def level_chunks(self, level: int) -> tuple[int, int, int]:
        """The chunk shape of ``level`` (y and x halved per level)."""
        factor = 2**level
        z, y, x = self.chunks
        return z, max(1, y // factor), max(1, x // factor)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (stored in the root attributes)."""
        return {
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "arrays": dict(self.arrays),
            "voxel_size": list(self.voxel_size) if self.voxel_size else None,
            "translation": list(self.translation),
            "levels": int(self.levels),
        }


def ome_multiscales(name: str, layout: StoreLayout) -> dict[str, Any]:
    """The OME-Zarr 0.5 ``ome`` attributes of one image group: levels ``"0"``, ``"1"``...,
    axes z, y, x (unit nanometer when the voxel size is known), scale = voxel size (y and x
    doubled per level), translation = offset (shifted to the centre of each level's first
    voxel, as a block mean puts it)."""
    unit = {"unit": "nanometer"} if layout.voxel_size else {}
    axes = [{"name": axis, "type": "space", **unit} for axis in "zyx"]
    base = list(layout.voxel_size) if layout.voxel_size else [1.0, 1.0, 1.0]
    datasets = []
    for level in range(layout.levels):
        factors = [1, 2**level, 2**level]
        scale = [size * f for size, f in zip(base, factors, strict=True)]
        translation = [
            t + (f - 1) * size / 2
            for t, f, size in zip(layout.translation, factors, base, strict=True)
        ]
        transforms = [
            {"type": "scale", "scale": scale},
            {"type": "translation", "translation": translation},
        ]
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    multiscale = {"name": name, "axes": axes, "datasets": datasets}
    if layout.levels > 1:
        multiscale["type"] = "mean of 2 x 2 in y, x"
    return {"version": "0.5", "multiscales": [multiscale]}


class PredictionStore:
    """An open prediction store (see the module docstring); workers write blocks into it.

    Attributes:
        path: the store directory.
        layout: its :class:`StoreLayout`.
    """

    def __init__(self, path: Path, group: Any, layout: StoreLayout) -> None:
        self.path = Path(path)
        self.layout = layout
        self._group = group
        self._arrays = {
            (name, level): group[f"{name}/{level}"]
            for name in layout.arrays
            for level in range(layout.levels)
        }

    @property
    def run(self) -> dict[str, Any]:
        """The settings of the run that writes the store (what a resumed run must repeat)."""
        return dict(self._group.attrs[ATTRS_KEY].get("run") or {})

    @property
    def complete(self) -> bool:
        """Whether every block was written and the store marked complete."""
        return bool(self._group.attrs[ATTRS_KEY].get("complete"))

    def write_block(
        self, offset: Sequence[int], blocks: Mapping[str, np.ndarray], level: int = 0
    ) -> None:
        """Write the box of every array that starts at ``offset`` and has the blocks' shape.

        Args:
            offset: ``(z, y, x)`` of the box's first voxel in ``level``'s voxels; multiples of
                its chunk shape.
            blocks: array name -> ``(z, y, x)`` block in that array's dtype; every array of
                the layout, all of one shape, ending at chunk boundaries or the level's end.
            level: the resolution level (:attr:`StoreLayout.levels`).

        Raises:
            ValueError: a block that is not whole chunks, or a missing / wrong array.
        """
        if set(blocks) != set(self.layout.arrays):
            raise ValueError(
                f"{self.path}: blocks of {sorted(blocks)}, store holds {sorted(self.layout.arrays)}"
            )
        shapes = {block.shape for block in blocks.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"{self.path}: blocks of different shapes {sorted(shapes)}")
        shape, start = shapes.pop(), tuple(int(o) for o in offset)
        box = []
        for axis, (first, size, chunk, end) in enumerate(
            zip(
                start,
                shape,
                self.layout.level_chunks(level),
                self.layout.level_shape(level),
                strict=True,
            )
        ):
            last = first + size
            if first % chunk or (last % chunk and last != end) or not 0 <= first < last <= end:
                raise ValueError(
                    f"{self.path}: {'zyx'[axis]} {first}-{last - 1} is not whole chunks of "
                    f"{chunk} within 0-{end - 1}"
                )
            box.append(slice(first, last))
        for name, block in blocks.items():
            if str(block.dtype) != self.layout.arrays[name]:
                raise ValueError(
                    f"{self.path}/{name}: block of {block.dtype}, expected "
                    f"{self.layout.arrays[name]}"
                )
            self._arrays[name, level][tuple(box)] = block

    def mark_complete(self) -> None:
        """Record that every block is written (the last write of a run)."""
        self._group.attrs[ATTRS_KEY] = {**self._group.attrs[ATTRS_KEY], "complete": True}


def _layout_of(group: Any, where: Path) -> StoreLayout:
    attrs = group.attrs.get(ATTRS_KEY)
    if not isinstance(attrs, dict) or "layout" not in attrs:
        raise DataError(f"{where}: not a prediction store written by emseg (no {ATTRS_KEY} attrs)")
    layout = dict(attrs["layout"])
    return StoreLayout(
        shape=tuple(layout["shape"]),
        chunks=tuple(layout["chunks"]),
        arrays=layout["arrays"],
        voxel_size=tuple(layout["voxel_size"]) if layout.get("voxel_size") else None,
        translation=tuple(layout["translation"]),
        levels=int(layout.get("levels", 1)),
    )


def open_prediction_store(path: str | Path, mode: str = "r+") -> PredictionStore:
    """Open an existing prediction store (``r+`` for a worker, ``r`` to inspect it).

    Raises:
        DataError: not a Zarr group written by :func:`create_prediction_store`.
    """
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode=mode)
    except Exception as err:  # zarr raises store-specific errors
        raise DataError(f"{path}: not a readable Zarr group ({err})") from err
    return PredictionStore(path, group, _layout_of(group, path))


def create_prediction_store(
    path: str | Path, layout: StoreLayout, run: Mapping[str, Any], overwrite: bool = False
) -> PredictionStore:
    """Create the store with all of its metadata and ``complete: false`` (no chunk yet).

    Args:
        path: the store directory (``out.zarr`` / ``out.ome.zarr``); its parent must exist.
        layout: shape, chunks, arrays and coordinates.
        run: the settings of the run (JSON values), kept so that a resumed run can be
            checked against them.
        overwrite: replace an existing directory at ``path``.

    Raises:
        ConfigError: ``path`` exists (without ``overwrite``) or its parent does not.
    """
    import zarr

    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"output: directory {path.parent} does not exist")
    if path.exists():
        if not overwrite:
            raise ConfigError(f"output: {path} already exists; pass overwrite=true to replace it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs[ATTRS_KEY] = {"complete": False, "layout": layout.as_dict(), "run": dict(run)}
    for name, dtype in layout.arrays.items():
        image = root.create_group(name)
        image.attrs["ome"] = ome_multiscales(name, layout)
        for level in range(layout.levels):
            image.create_array(
                str(level),
                shape=layout.level_shape(level),
                chunks=layout.level_chunks(level),
                dtype=dtype,
                fill_value=0,
                dimension_names=("z", "y", "x"),
            )
    return PredictionStore(path, root, layout)


def chunk_aligned(block_slices: int, chunk_z: int) -> int:
    """``block_slices`` rounded up to a whole number of chunks in z (at least one)."""
    return max(1, math.ceil(int(block_slices) / chunk_z)) * chunk_z


def check_layout_matches(
    store: PredictionStore, layout: StoreLayout, run: Mapping, key: str
) -> None:
    """Refuse to resume into a store written with another layout or other settings.

    Raises:
        ConfigError: naming the first field that differs (``overwrite=true`` starts over).
    """
    for name, (old, new) in {
        "layout": (store.layout.as_dict(), layout.as_dict()),
        "settings": (store.run, dict(run)),
    }.items():
        if old != new:
            first = next(
                (k for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)), "?"
            )
            raise ConfigError(
                f"{key}: {store.path} is an unfinished prediction with another {name} "
                f"({first}: {old.get(first)!r} there, {new.get(first)!r} now); rerun the same "
                "command to finish it, or pass overwrite=true to start over"
            )
