"""Chunked array stores as volume sources: HDF5 datasets (h5py) and Zarr arrays (zarr).

Both are read lazily, block by block, through the store's own chunked slicing. Leading axes of
length 1 (OME-Zarr's ``(t, c, z, y, x)`` with one time point and channel) and trailing ones (a
channel-last ``(z, y, x, 1)``) are dropped; any other extra axis is an error. An OME-Zarr
multiscale group stands for its level 0 (full resolution), and its voxel size comes from that
level's ``coordinateTransformations``.

A store that another process is still writing (or that a killed writer left behind) is
detected where its metadata shows it, before any data is read:

* a metadata file (``zarr.json``, ``.zarray``, ``.zgroup``, ``.zattrs``; N5's
  ``attributes.json``) that is empty or not valid JSON (written half-way);
* an array folder holding chunk files but no array metadata (chunks written first);
* an OME-Zarr multiscale group whose level 0 is listed but has no metadata yet;
* a chunk that cannot be decoded (truncated) is refused when it is read;
* an emseg prediction store (:mod:`emseg.io.prediction_store`) not yet marked complete.

Not detectable: chunks that do not exist yet. Zarr and N5 store no chunk list, and a missing
chunk is by definition the fill value (blank regions are never written), so a store whose
chunks are still being written reads as a volume that is partly empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import DataError
from emseg.io.source import VolumeSource
from emseg.io.units import nm_per_unit, voxel_or_none

__all__ = ["HDF5Source", "ZarrSource", "check_metadata_files", "read_metadata_json"]

# Metadata files of a Zarr v2 / v3 node.
_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_WRITING = "incomplete, or still being written by another process"


def _volume_axes(shape: tuple[int, ...], where: str) -> tuple[int, tuple[int, ...], int]:
    """``(leading, volume shape, trailing)``: the ``(Z, Y, X)`` (or 2D) part of a stored
    ``shape`` and how many axes of length 1 come before and after it; or one
    :class:`DataError`.

    Axes of length 1 are dropped from the front (``(t, c, z, y, x)`` with ``t = c = 1``), then
    from the back (channel-last ``(z, y, x, 1)``), while more than 3 axes remain.
    """
    stored = tuple(int(s) for s in shape)
    lead, trail = 0, 0
    while len(stored) - lead > 3 and stored[lead] == 1:
        lead += 1
    while len(stored) - lead - trail > 3 and stored[len(stored) - 1 - trail] == 1:
        trail += 1
    volume = stored[lead : len(stored) - trail]
    if len(volume) <= 3:
        return lead, volume, trail
    if sum(size > 1 for size in stored) > 3:
        raise DataError(
            f"{where}: array of shape {stored} has more than 3 axes of length > 1; emseg reads "
            "one grayscale (Z, Y, X) volume (select a channel / time point first)"
        )
    raise DataError(
        f"{where}: array of shape {stored} has an axis of length 1 between longer axes, so "
        "its (Z, Y, X) axes are ambiguous; store it as (Z, Y, X)"
    )


def read_metadata_json(file: Path) -> dict:
    """The JSON object in a store's metadata ``file``, or one :class:`DataError` naming it.

    An empty or unparsable file is what a writer leaves half-way (see the module docstring).
    """
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{file}: metadata is not valid JSON ({err}); the store is {_WRITING}"
        ) from err
    except OSError as err:
        raise DataError(f"{file}: cannot read the metadata ({err.strerror})") from err
    if not isinstance(value, dict):
        raise DataError(f"{file}: metadata is not a JSON object; the store is {_WRITING}")
    return value


def check_metadata_files(store: Path, key: str, names: tuple[str, ...]) -> None:
    """Parse every metadata file ``names`` from the store's root down to ``key``.

    Raises:
        DataError: one of them is empty or not valid JSON (naming it).
    """
    node = store
    for part in ["", *(p for p in key.split("/") if p)]:
        node = node / part if part else node
        for name in names:
            if (node / name).is_file():
                read_metadata_json(node / name)


def _has_chunks(folder: Path) -> bool:
    """Whether ``folder`` holds chunk files or chunk folders (named by numbers, or ``c``)."""
    if not folder.is_dir():
        return False
    return any(
        entry.name == "c" or entry.name.split(".")[0].isdigit() for entry in folder.iterdir()
    )


def _check_zarr_node(store: Path, key: str) -> None:
    """Refuse a Zarr store that is half-written where ``key`` points (see module docstring)."""
    if not store.is_dir():
        return  # zip or remote stores: zarr's own errors apply
    check_metadata_files(store, key, _ZARR_METADATA)
    root = store / "zarr.json"
    emseg_attrs = (
        read_metadata_json(root).get("attributes", {}).get("emseg") if root.is_file() else None
    )
    if isinstance(emseg_attrs, dict) and emseg_attrs.get("complete") is False:
        raise DataError(
            f"{store}: blockwise prediction not complete (interrupted, or still running); "
            "rerun the same predict.py command to finish it"
        )
    node = store / key if key else store
    described = ("zarr.json", ".zarray", ".zgroup")  # .zattrs alone describes no node
    if not any((node / name).is_file() for name in described) and _has_chunks(node):
        raise DataError(
            f"{node}: chunk files but no array metadata (zarr.json / .zarray); the array is "
            f"{_WRITING}"
        )


class _ArraySource(VolumeSource):
    """A source over any array-like with numpy slicing (an h5py dataset, a zarr array)."""

    def __init__(
        self, where: Path, array: Any, voxel_size: tuple[float, float, float] | None = None
    ) -> None:
        self._array = array
        self._lead, shape, self._trail = _volume_axes(array.shape, str(where))
        super().__init__(where, shape, array.dtype, voxel_size)

    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        inner = (z, y, x) if self.ndim == 3 else (y, x)
        index = (0,) * self._lead + inner + (0,) * self._trail
        try:
            block = np.asarray(self._array[index])
        except DataError:
            raise
        except Exception as err:  # codecs and stores raise many types for a broken chunk
            raise DataError(
                f"{self.path}: cannot read slices {z.start}-{z.stop - 1} "
                f"({type(err).__name__}: {err}); a chunk is corrupt or {_WRITING}"
            ) from err
        return block if self.ndim == 3 else block[None]


class HDF5Source(_ArraySource):
    """The dataset ``key`` of an HDF5 file (``file.h5:key``).

    A ``resolution`` attribute of three numbers is taken as the ``(z, y, x)`` voxel size in
    nanometres (the CREMI convention).

    Raises:
        DataError: the file is not HDF5, ``key`` is missing (the datasets that exist are
            listed) or is a group.
    """

    def __init__(self, path: Path, key: str) -> None:
        import h5py

        try:
            self._file = h5py.File(path, "r")
        except OSError as err:
            raise DataError(f"{path}: not a readable HDF5 file ({err})") from err
        datasets = _h5_datasets(self._file)
        if not key and len(datasets) == 1:  # the file's only dataset needs no name
            key = datasets[0]
        where = Path(f"{path}:{key}") if key else path
        try:
            node = self._file.get(key) if key else None
            if not isinstance(node, h5py.Dataset):
                raise DataError(_missing(where, key, node is not None, datasets))
            voxel = voxel_or_none(node.attrs.get("resolution"), 1.0)
            super().__init__(where, node, voxel)
        except DataError:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None


class ZarrSource(_ArraySource):
    """The array ``key`` of a Zarr store (v2 or v3; ``store.zarr/key``), or its level 0.

    An OME-Zarr multiscale group means its level 0; a level is chosen by naming it
    (``store.zarr/2``), and its voxel size is read from the group's metadata either way.

    Raises:
        DataError: not a Zarr store, ``key`` missing (the arrays that exist are listed), a
            store half-written by another process (see the module docstring).
    """

    def __init__(self, path: Path, key: str) -> None:
        import zarr

        where = Path(f"{path}/{key}" if key else str(path))
        _check_zarr_node(path, key)
        try:
            node = zarr.open(str(path), mode="r", path=key or None)
        except Exception as err:  # zarr raises store-specific errors for missing paths
            try:
                arrays = _zarr_arrays(zarr.open_group(str(path), mode="r"))
            except Exception:
                raise DataError(f"{path}: not a readable Zarr store ({err})") from err
            raise DataError(_missing(where, key, False, arrays, "/")) from err
        voxel = None
        if isinstance(node, zarr.Group):
            level, voxel = _ome_level0(node)
            if level is None:
                raise DataError(_missing(where, key, True, _zarr_arrays(node), "/"))
            node = _ome_level(node, path, f"{key}/{level}".strip("/"), where)
        elif key:
            voxel = _level_voxel_size(path, key)
        super().__init__(where, node, voxel)

    def close(self) -> None:
        self._array = None


def _ome_level(group: Any, store: Path, key: str, where: Path) -> Any:
    """The level array ``key`` listed by an OME-Zarr group, or a :class:`DataError` when it
    is missing (a multiscale store whose levels are still being written)."""
    level = key.rsplit("/", 1)[-1]
    _check_zarr_node(store, key)
    try:
        node = group[level]
    except KeyError as err:
        raise DataError(
            f"{where}: the OME-Zarr multiscales metadata lists level {level!r}, which has no "
            f"array metadata; the store is {_WRITING}"
        ) from err
    if not hasattr(node, "shape"):
        raise DataError(f"{where}: OME-Zarr level {level!r} is a group, not an array")
    return node


def _missing(where: Path, key: str, is_group: bool, existing: list[str], sep: str = ":") -> str:
    """The message for a ``key`` that is no array: missing, or a group; lists ``existing``."""
    listed = ", ".join(existing[:12]) + (", ..." if len(existing) > 12 else "") or "none"
    if not key:
        what = "is a group, not an array" if is_group else "no array named, and not just one"
    else:
        what = f"{key!r} is a group, not an array" if is_group else f"no array {key!r}"
    return f"{where}: {what}; arrays in the file: {listed} (give one as <file>{sep}<array>)"


def _h5_datasets(file: Any) -> list[str]:
    import h5py

    names: list[str] = []

    def visit(name: str, node: Any) -> None:  # a non-None return would stop the visit
        if isinstance(node, h5py.Dataset):
            names.append(name)

    file.visititems(visit)
    return names


def _zarr_arrays(group: Any) -> list[str]:
    return sorted(path for path, _ in group.arrays()) + sorted(
        f"{name}/{sub}" for name, child in group.groups() for sub in _zarr_arrays(child)
    )


def _ome_level0(group: Any) -> tuple[str | None, tuple[float, float, float] | None]:
    """The path of an OME-Zarr group's full-resolution level and its ``(z, y, x)`` voxel (nm)."""
    return _ome_dataset(group, None)


def _ome_dataset(
    group: Any, name: str | None
) -> tuple[str | None, tuple[float, float, float] | None]:
    """The level ``name`` (``None``: the first, full-resolution one) of an OME-Zarr group and
    its ``(z, y, x)`` voxel size in nm; ``(None, None)`` when the group lists no such level."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None, None
    first = multiscales[0]
    levels = first["datasets"]
    if name is not None:
        levels = [level for level in levels if str(level.get("path")) == name]
        if not levels:
            return None, None
    level = levels[0]
    scale = next(
        (t["scale"] for t in level.get("coordinateTransformations", []) if t["type"] == "scale"),
        None,
    )
    axes = first.get("axes", [])
    if scale is None or len(scale) < 3 or len(axes) != len(scale):
        return level["path"], None
    units = [nm_per_unit(axis.get("unit")) for axis in axes[-3:]]
    if None in units:
        return level["path"], None
    voxel = voxel_or_none([s * u for s, u in zip(scale[-3:], units, strict=True)], 1.0)
    return level["path"], voxel


def _level_voxel_size(path: Path, key: str) -> tuple[float, float, float] | None:
    """The voxel size of array ``key`` when it is a level of an OME-Zarr multiscale group
    (``store.zarr/1`` chooses level 1; its scale is in the parent group's metadata)."""
    import zarr

    parent, _, name = key.rpartition("/")
    try:
        group = zarr.open_group(str(path), mode="r", path=parent or None)
    except Exception:  # no parent group: a plain array
        return None
    return _ome_dataset(group, name)[1]
