"""Chunked array stores as volume sources: HDF5 datasets (h5py) and Zarr arrays (zarr).

Both are read lazily, block by block, through the store's own chunked slicing. Leading axes of
length 1 (OME-Zarr's ``(t, c, z, y, x)`` with one time point and channel) are dropped; any other
extra axis is an error. An OME-Zarr multiscale group stands for its level 0 (full resolution),
and its voxel size comes from that level's ``coordinateTransformations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import DataError
from emseg.io.source import VolumeSource

__all__ = ["HDF5Source", "ZarrSource"]

# OME-NGFF axis units -> nanometres.
_UNIT_NM = {"nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6}


def _volume_shape(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """``shape`` without leading axes of length 1, or a :class:`DataError` for other extras."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 3:
        raise DataError(
            f"{where}: array of shape {shape} has more than 3 axes of length > 1; emseg reads "
            "one grayscale (Z, Y, X) volume (select a channel / time point first)"
        )
    return shape


class _ArraySource(VolumeSource):
    """A source over any array-like with numpy slicing (an h5py dataset, a zarr array)."""

    def __init__(self, where: Path, array: Any, voxel_size=None) -> None:
        self._array = array
        self._extra = len(array.shape) - len(_volume_shape(array.shape, str(where)))
        super().__init__(where, _volume_shape(array.shape, str(where)), array.dtype, voxel_size)

    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        index = (0,) * self._extra + ((z, y, x) if self.ndim == 3 else (y, x))
        block = np.asarray(self._array[index])
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
            resolution = node.attrs.get("resolution")
            voxel = tuple(float(v) for v in resolution) if _three(resolution) else None
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

    Raises:
        DataError: not a Zarr store, ``key`` missing (the arrays that exist are listed).
    """

    def __init__(self, path: Path, key: str) -> None:
        import zarr

        where = Path(f"{path}/{key}" if key else str(path))
        try:
            node = zarr.open(str(path), mode="r", path=key or None)
        except Exception as err:  # zarr raises store-specific errors for missing paths
            try:
                arrays = _zarr_arrays(zarr.open_group(str(path), mode="r"))
            except Exception:
                raise DataError(f"{path}: not a readable Zarr store ({err})") from err
            raise DataError(_missing(where, key, False, arrays)) from err
        voxel = None
        if isinstance(node, zarr.Group):
            level, voxel = _ome_level0(node)
            if level is None:
                raise DataError(_missing(where, key, True, _zarr_arrays(node)))
            node = node[level]
        super().__init__(where, node, voxel)

    def close(self) -> None:
        self._array = None


def _three(value: Any) -> bool:
    return value is not None and np.ndim(value) == 1 and len(value) == 3


def _missing(where: Path, key: str, is_group: bool, existing: list[str]) -> str:
    listed = ", ".join(existing[:12]) or "none"
    if not key:
        what = "is a group, not an array" if is_group else "no array named, and not just one"
    else:
        what = f"{key!r} is a group, not an array" if is_group else f"no array {key!r}"
    return f"{where}: {what}; arrays in the file: {listed} (give one as <file>:<array>)"


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
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None, None
    first = multiscales[0]
    level = first["datasets"][0]
    scale = next(
        (t["scale"] for t in level.get("coordinateTransformations", []) if t["type"] == "scale"),
        None,
    )
    axes = first.get("axes", [])
    if scale is None or len(scale) < 3 or len(axes) != len(scale):
        return level["path"], None
    units = [_UNIT_NM.get(str(axis.get("unit", "")), None) for axis in axes[-3:]]
    if None in units:
        return level["path"], None
    voxel = tuple(float(s) * u for s, u in zip(scale[-3:], units, strict=True))
    return level["path"], voxel  # type: ignore[return-value]
