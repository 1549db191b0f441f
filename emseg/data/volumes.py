"""Training volumes: which image voxels carry which labels, for one or several volumes.

A data config names its labelled volumes as entries (``data.volumes``; the single-volume keys
``train_image`` / ``train_mask`` are the shorthand for one entry)::

    volumes:
      - image: raw.zarr/s0            # any volume string of emseg.io.open_volume
        labels: crops.h5:crop1        # labels of a region of the image ...
        offset: [100, 512, 512]       # ... whose first voxel is image voxel (z, y, x)
      - image: other.tif
        labels: other_labels.tif
        roi: [[0, 80], null, null]    # use only image slices 0-79 (half-open [start, stop) per
                                      # axis, null = the whole axis)

The labels of an entry cover the box ``offset .. offset + labels.shape`` of the image; its
*labelled region* is that box cut to the ROI. Everything outside the region, and every voxel of
the labels' ``unlabelled`` value, is :data:`~emseg.data.labels.IGNORE`. Patches are read from
the image around the region (real context beyond a labels crop in y / x), so a crop smaller
than a patch still trains. Axes are always ``(Z, Y, X)`` voxels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from emseg.data.labels import IGNORE, to_targets
from emseg.errors import ConfigError, DataError
from emseg.io import open_volume

__all__ = [
    "Box",
    "LazyImage",
    "TrainingVolume",
    "VolumeEntry",
    "held_out_slices",
    "labelled_region",
    "load_volume",
    "parse_entries",
    "read_targets",
    "split_regions",
    "training_entries",
]

_ENTRY_KEYS = {"image", "labels", "offset", "roi", "name"}


@dataclass(frozen=True)
class Box:
    """A half-open box of voxels: ``start[i] <= index < stop[i]`` on axes ``(Z, Y, X)``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def empty(self) -> bool:
        return any(size <= 0 for size in self.shape)

    def slices(self, origin: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """The box as slices of an array whose first voxel is ``origin``."""
        return tuple(
            slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin, strict=True)
        )  # type: ignore[return-value]

    def intersect(self, other: Box) -> Box:
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, stop)  # type: ignore[arg-type]

    def within(self, shape: Sequence[int]) -> bool:
        """Whether the box lies inside an array of ``shape`` (starting at 0)."""
        return all(0 <= a and b <= s for a, b, s in zip(self.start, self.stop, shape, strict=True))

    def __str__(self) -> str:
        return "[" + ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop, strict=True)) + "]"


@dataclass(frozen=True)
class VolumeEntry:
    """One labelled volume of a data config (module docstring).

    Attributes:
        image: volume string of the raw image.
        labels: volume string of its labels (mask or instance ids).
        offset: image voxel ``(z, y, x)`` of the labels' first voxel; ``None``: the labels
            cover the whole image (and must have its shape).
        roi: ``((z0, z1), (y0, y1), (x0, x1))`` half-open image range per axis to use
            (``None`` per axis or for all: the whole axis).
        name: a short name for logs and records (default: the image file's name).
    """

    image: str
    labels: str
    offset: tuple[int, int, int] | None = None
    roi: tuple[tuple[int | None, int | None] | None, ...] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.image.rstrip("/")).name


def _triple(value: Any, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{where} must be three integers [z, y, x], got {value!r}")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _roi(value: Any, where: str) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ConfigError(f"{where} must be 3 ranges [[z0, z1], [y0, y1], [x0, x1]], got {value!r}")
    axes = []
    for axis, pair in zip("zyx", value, strict=True):
        if pair is None:
            axes.append(None)
            continue
        ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
        ok = ok and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in pair)
        if not ok:
            raise ConfigError(f"{where}: the {axis} range must be [start, stop], got {pair!r}")
        axes.append((pair[0], pair[1]))
    return tuple(axes)


def parse_entries(value: Any, key: str) -> list[VolumeEntry]:
    """Check a config list of volume entries (``data.volumes`` / ``data.val_volumes``).

    Raises:
        ConfigError: not a non-empty list of mappings with ``image`` and ``labels`` strings
            and valid optional keys (each message names ``key[i].field``).
    """
    if isinstance(value, Mapping) or isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list of {{image, labels}} entries, got {value!r}")
    if not value:
        raise ConfigError(f"{key} is empty: give at least one {{image, labels}} entry")
    entries = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping with image and labels, got {entry!r}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {sorted(unknown)}; an entry has {sorted(_ENTRY_KEYS)}"
            )
        for field in ("image", "labels"):
            if not isinstance(entry.get(field), str) or not entry.get(field):
                raise ConfigError(
                    f"{where}.{field} must be a volume string, got {entry.get(field)!r}"
                )
        entries.append(
            VolumeEntry(
                image=str(entry["image"]),
                labels=str(entry["labels"]),
                offset=None
                if entry.get("offset") is None
                else _triple(entry["offset"], f"{where}.offset"),
                roi=_roi(entry.get("roi"), f"{where}.roi"),
                name=None if entry.get("name") is None else str(entry["name"]),
            )
        )
    return entries


class LazyImage:
    """Slices ``z0 .. z0 + depth - 1`` of an image volume, read from its store on demand.

    Picklable (DataLoader workers reopen the store in their own process: h5py handles must not
    cross a fork). ``image[zs, ys, xs]`` with an index array ``zs`` and two slices reads one
    contiguous z block and returns ``(len(zs), Y', X')``, like the numpy array it stands for.
    """

    def __init__(self, spec: str, z0: int, depth: int, shape_yx: tuple[int, int], dtype) -> None:
        self.spec, self.z0 = spec, int(z0)
        self.shape = (int(depth), *shape_yx)
        self.dtype = np.dtype(dtype)
        self._source = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self.shape[0]

    def sliced(self, start: int, stop: int) -> LazyImage:
        """The slices ``start .. stop - 1`` of this view."""
        return LazyImage(self.spec, self.z0 + start, stop - start, self.shape[1:], self.dtype)

    def __getitem__(self, index: tuple) -> np.ndarray:
        if self._source is None:
            self._source = open_volume(self.spec, "image")
        zs, ys, xs = index if isinstance(index, tuple) else (index, slice(None), slice(None))
        if isinstance(zs, int | np.integer):
            return self[np.array([zs]), ys, xs][0]
        zs = np.atleast_1d(
            np.asarray(zs if not isinstance(zs, slice) else range(*zs.indices(len(self))))
        )
        first, last = int(zs.min()), int(zs.max())
        block = self._source.read(slice(self.z0 + first, self.z0 + last + 1), ys, xs)
        return block[zs - first]


@dataclass(frozen=True)
class TrainingVolume:
    """A labelled region of one image, ready for patch sampling.

    Attributes:
        image: ``(Z, H, W)`` image slices of the region's z-range (numpy, or a
            :class:`LazyImage` for volumes read from their store).
        targets: ``(Z, h, w)`` uint8 {0, 1, IGNORE} of the region, whose first voxel is image
            voxel ``(z, y0, x0)`` of ``image`` (the same z).
        y0, x0: the region's corner in the image's y / x.
        name: for logs.
        z_start: the region's first slice in the whole image (for logs and split=val).
        intensity_range: the whole image's ``(p_low, p_high)`` percentiles of its [0, 1]-scaled
            intensities (``data.percentiles``), by which its patches are mapped
            (:func:`emseg.data.normalization.map_intensities`); ``None``: no mapping.
    """

    image: Any
    targets: np.ndarray
    y0: int
    x0: int
    name: str
    z_start: int = 0
    intensity_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.image) != len(self.targets):
            raise ValueError("image and targets must span the same slices")

    @property
    def depth(self) -> int:
        return len(self.targets)

    @property
    def covers_image(self) -> bool:
        """Whether every voxel of the image slices is labelled (no IGNORE, no crop)."""
        return (
            self.y0 == 0
            and self.x0 == 0
            and self.targets.shape[1:] == tuple(self.image.shape[1:])
            and not bool((self.targets == IGNORE).any())
        )

    def z_slice(self, start: int, stop: int) -> TrainingVolume:
        """Slices ``start .. stop - 1`` of the region (a z-contiguous split)."""
        image = (
            self.image.sliced(start, stop)
            if isinstance(self.image, LazyImage)
            else self.image[start:stop]
        )
        return replace(
            self, image=image, targets=self.targets[start:stop], z_start=self.z_start + start
        )


def _region(entry: VolumeEntry, image_shape: tuple[int, int, int], labels_shape) -> Box:
    """The labelled region in image voxels: the labels box cut to the ROI (or a DataError)."""
    if entry.offset is None and tuple(labels_shape) != tuple(image_shape):
        raise DataError(
            f"image {entry.image} has shape {image_shape} but labels {entry.labels} have shape "
            f"{tuple(labels_shape)}; they must match (labels of a crop need an offset: "
            "data.volumes: [{image: ..., labels: ..., offset: [z, y, x]}])"
        )
    offset = entry.offset or (0, 0, 0)
    labels_box = Box(offset, tuple(o + s for o, s in zip(offset, labels_shape, strict=True)))
    if not labels_box.within(image_shape):
        raise DataError(
            f"labels {entry.labels} (shape {tuple(labels_shape)}) at offset {list(offset)} cover "
            f"voxels {labels_box}, outside the image {entry.image} of shape {image_shape}; "
            "labels must lie inside their image (check the offset and the axes order Z, Y, X)"
        )
    if entry.roi is None:
        return labels_box
    start, stop = [], []
    for axis, size, pair in zip("zyx", image_shape, entry.roi, strict=True):
        a, b = (0, size) if pair is None else (pair[0] or 0, size if pair[1] is None else pair[1])
        if not 0 <= a < b <= size:
            raise DataError(
                f"roi {axis} range [{a}, {b}) of {entry.image} is outside the image's {axis} "
                f"extent [0, {size}) (shape {image_shape})"
            )
        start.append(a)
        stop.append(b)
    region = labels_box.intersect(Box(tuple(start), tuple(stop)))  # type: ignore[arg-type]
    if region.empty:
        raise DataError(
            f"roi {Box(tuple(start), tuple(stop))} of {entry.image} does not overlap its labels "
            f"{entry.labels} (voxels {labels_box})"
        )
    return region


def training_entries(
    train_image: str | None, train_mask: str | None, volumes: list | None
) -> list[VolumeEntry]:
    """The training volume entries: ``data.volumes``, or the one of ``train_image`` /
    ``train_mask`` (exactly one of the two forms; ConfigError otherwise)."""
    single = train_image is not None or train_mask is not None
    if single and volumes is not None:
        raise ConfigError(
            "give the training data either as data.train_image + data.train_mask or as "
            "data.volumes, not both (set the other to null)"
        )
    if volumes is not None:
        return parse_entries(volumes, "data.volumes")
    if not (train_image and train_mask):
        missing = "data.train_mask" if train_image else "data.train_image"
        raise ConfigError(f"{missing} is not set (or give data.volumes)")
    return parse_entries([{"image": train_image, "labels": train_mask}], "data.train_image")


def held_out_slices(val_slices: int | float, depth: int, where: str) -> int:
    """Slices held out for validation at the end of a labelled region of ``depth`` slices.

    Args:
        val_slices: a slice count, or a fraction in (0, 1) of ``depth`` (rounded half up, at
            least one slice).
        where: the volume, for the message.

    Raises:
        ConfigError: no training slice would be left.
    """
    count = val_slices if isinstance(val_slices, int) else math.floor(val_slices * depth + 0.5)
    count = max(1, int(count))
    if count >= depth:
        raise ConfigError(
            f"data.val_slices={val_slices} leaves no training slices in {where} "
            f"({depth} labelled slices); lower it or give data.val_volumes"
        )
    return count


def split_regions(
    entries: Sequence[VolumeEntry],
    val_entries: Sequence[VolumeEntry] | None,
    val_slices: int | float,
) -> tuple[list[tuple[VolumeEntry, Box]], list[tuple[VolumeEntry, Box]]]:
    """``(training, validation)`` boxes (image voxels) of every volume entry.

    With ``val_entries`` the validation boxes are their labelled regions and the training
    volumes are used whole; otherwise the last ``val_slices`` slices of each training volume's
    labelled region are held out (z-contiguous: neighbouring EM slices are nearly identical,
    so a random hold-out would leak the training data). Only shapes are read.
    """
    train, val = [], []
    for entry in entries:
        region = labelled_region(entry)
        if val_entries is not None:
            train.append((entry, region))
            continue
        split = region.stop[0] - held_out_slices(val_slices, region.shape[0], entry.image)
        train.append((entry, Box(region.start, (split, *region.stop[1:]))))
        val.append((entry, Box((split, *region.start[1:]), region.stop)))
    for entry in val_entries or []:
        val.append((entry, labelled_region(entry)))
    return train, val


def labelled_region(entry: VolumeEntry) -> Box:
    """The labelled region of ``entry`` in image voxels (opens both volumes for their shapes).

    Raises:
        DataError: unreadable volumes, labels outside the image, an ROI outside the image or
            not overlapping the labels.
    """
    with open_volume(entry.image, "image") as image, open_volume(entry.labels, "labels") as labels:
        return _region(entry, image.shape, labels.shape)


def load_volume(
    entry: VolumeEntry,
    box: Box,
    convention: str = "auto",
    unlabelled: int | None = None,
    in_memory_bytes: int = 2 << 30,
) -> TrainingVolume:
    """Read the targets of ``box`` (part of the labelled region of ``entry``, image voxels)
    and the image slices they label.

    The image slices are loaded into memory when they take at most ``in_memory_bytes``;
    larger ones are read from the store patch by patch (:class:`LazyImage`). The targets of
    the box are always held in memory as uint8.

    Raises:
        DataError: unreadable volumes, label values outside the convention, or no labelled
            voxel in the box.
    """
    with open_volume(entry.image, "image") as image_source:
        _, height, width = image_source.shape
        dtype = image_source.dtype
        with open_volume(entry.labels, "labels") as labels_source:
            stored = labels_source.read(*box.slices(entry.offset or (0, 0, 0)))
        targets = to_targets(stored, entry.labels, convention, unlabelled)
        if not bool((targets != IGNORE).any()):
            raise DataError(
                f"{entry.labels}: every voxel of {box} (image voxels) is unlabelled "
                f"(data.unlabelled={unlabelled}); nothing to train or validate on there"
            )
        (z0, y0, x0), z1 = box.start, box.stop[0]
        if (z1 - z0) * height * width * dtype.itemsize <= in_memory_bytes:
            image = image_source.read(slice(z0, z1))
        else:
            image = LazyImage(entry.image, z0, z1 - z0, (height, width), dtype)
    # The targets' y / x are relative to (y0, x0); z is shared (the image slices start at z0).
    return TrainingVolume(image, targets, y0, x0, entry.label, z0)


def read_targets(
    path: str,
    convention: str = "auto",
    unlabelled: int | None = None,
    shape: tuple[int, int, int] | None = None,
    image: str | None = None,
) -> np.ndarray:
    """A whole label volume as targets ``(Z, Y, X)`` uint8 {0, 1, IGNORE} (test labels).

    Raises:
        DataError: unreadable, values outside the convention, or a shape other than ``shape``
            (that of the image ``image``) when given.
    """
    with open_volume(path, "labels") as source:
        if shape is not None and source.shape != tuple(shape):
            raise DataError(
                f"image {image or '(the image)'} has shape {tuple(shape)} but labels {path} "
                f"have shape {source.shape}; they must match"
            )
        return to_targets(source.read(), path, convention, unlabelled)
