"""N5 datasets as volume sources (``store.n5/path/to/dataset``), read lazily with TensorStore.

Reader: `tensorstore <https://google.github.io/tensorstore/>`_ (Google, actively released,
binary wheels for Linux / macOS / Windows, no dependency beyond numpy and ml_dtypes; about
22 MB, next to torch's gigabytes). zarr 3 dropped zarr 2's ``N5Store``, z5py is a C++ build and
pyn5 is unmaintained since 2020, so tensorstore is the maintained N5 reader; it is a regular
dependency (N5 works after ``pip install emseg``), imported only when an N5 volume is opened.

Axes: N5 lists dimensions fastest-first, ``(x, y, z)``, in ``attributes.json`` (and stores
blocks in that column-major order); tensorstore keeps that order, and this source presents the
transpose, ``(z, y, x)``, like every other source. Attributes in ``x, y, z`` order (``resolution``,
``pixelResolution``) are reversed the same way.

Voxel size, ``(z, y, x)`` nm, from the dataset's attributes (or, for a multiscale group's
``s0``, the group's):

* ``pixelResolution: {"dimensions": [x, y, z], "unit": "um"}`` (N5 viewer / BigDataViewer);
* ``resolution: [x, y, z]`` (paintera, CREMI-style N5), in nanometres unless a ``units``
  attribute (one unit, or one per axis) says otherwise.

A group holding a multiscale pyramid (``multiScale: true``, ``scales`` or
``downsamplingFactors``, with datasets ``s0``, ``s1``, ...) stands for its ``s0``. Detectable
signs of a dataset still being written: see :mod:`emseg.io.arrays_on_disk`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import DataError
from emseg.io.arrays_on_disk import (
    _WRITING,
    _ArraySource,
    _has_chunks,
    _missing,
    check_metadata_files,
    read_metadata_json,
)
from emseg.io.units import nm_per_unit, voxel_or_none

__all__ = ["N5Source", "n5_datasets"]

_ATTRIBUTES = "attributes.json"
# Decoded chunks kept in memory per open dataset: slice-by-slice reads (2.5D inference) decode
# each chunk once instead of once per slice.
_CACHE_BYTES = 256 * 2**20
_LISTING_DEPTH = 8


# The process that first used tensorstore: its threads do not survive fork(), and tensorstore
# aborts a forked child that calls it (even on a fresh open), so children are refused first.
_TENSORSTORE_PID: int | None = None


def _tensorstore(where: Path) -> Any:
    """The ``tensorstore`` module, or a :class:`DataError` saying how to install it, or why a
    forked process (a ``fork`` DataLoader worker) cannot use it."""
    global _TENSORSTORE_PID
    _check_not_forked(where)
    try:
        import tensorstore
    except ImportError as err:  # an environment installed before N5 support was added
        raise DataError(
            f"{where}: reading N5 needs the tensorstore package: pip install tensorstore "
            "(or reinstall emseg: pip install -e .)"
        ) from err
    _TENSORSTORE_PID = _TENSORSTORE_PID or os.getpid()
    return tensorstore


def _check_not_forked(where: Path) -> None:
    """Refuse to call tensorstore in a child forked after the parent used it (it would abort
    the child: a worker that dies without a message)."""
    if _TENSORSTORE_PID is not None and _TENSORSTORE_PID != os.getpid():
        raise DataError(
            f"{where}: N5 (tensorstore) cannot be read in a process forked after N5 was read; "
            "start workers with spawn or forkserver (data.multiprocessing_context=spawn)"
        )


def _attributes(folder: Path) -> dict | None:
    """The ``attributes.json`` of an N5 node, ``None`` when it has none (a plain folder)."""
    file = folder / _ATTRIBUTES
    return read_metadata_json(file) if file.is_file() else None


def _is_dataset(attrs: dict | None) -> bool:
    return attrs is not None and "dimensions" in attrs and "dataType" in attrs


def _is_multiscale(attrs: dict | None) -> bool:
    keys = ("multiScale", "scales", "downsamplingFactors")
    return attrs is not None and any(attrs.get(key) for key in keys)


def n5_datasets(container: Path) -> list[str]:
    """The paths of the datasets inside an N5 ``container`` (groups are walked, blocks not)."""
    found: list[str] = []

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                attrs = _attributes(child)
            except DataError:
                continue  # listed for a message: a broken node is just left out
            if _is_dataset(attrs):
                found.append(child.relative_to(container).as_posix())
            elif depth < _LISTING_DEPTH and (attrs is not None or not child.name.isdigit()):
                walk(child, depth + 1)  # a digit-named folder without attributes is blocks

    walk(container, 0)
    return found


def _n5_voxel_size(attrs: dict) -> tuple[float, float, float] | None:
    """``(z, y, x)`` nm from a dataset's ``pixelResolution`` or ``resolution`` (``x, y, z``)."""
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict):
        values, unit = pixel.get("dimensions"), pixel.get("unit")
    elif "resolution" in attrs:
        values, unit = attrs["resolution"], attrs.get("units", "nm")
    else:
        return None
    if isinstance(unit, list):  # one unit per axis: usable only when they agree
        unit = unit[0] if len(set(map(str, unit))) == 1 else None
    if not isinstance(values, list):
        return None
    return voxel_or_none(values[::-1], nm_per_unit(unit))


class _ZYXView:
    """A tensorstore array of N5 axes ``(x, y, z, ...)`` seen as ``(..., z, y, x)``."""

    def __init__(self, store: Any, where: Path) -> None:
        self._store, self._where = store.T, where
        self.shape = tuple(int(s) for s in self._store.shape)
        self.dtype = np.dtype(self._store.dtype.numpy_dtype)

    def __getitem__(self, index: tuple) -> np.ndarray:
        _check_not_forked(self._where)
        return self._store[index].read().result()


def _resolve(container: Path, key: str, where: Path) -> tuple[str, dict, dict | None]:
    """``(dataset key, its attributes, the multiscale group's attributes)`` for ``key``.

    Raises:
        DataError: ``key`` missing or a group (the datasets that exist are listed), or a
            dataset half-written (blocks without ``attributes.json``, unparsable metadata).
    """
    if not container.is_dir():
        raise DataError(f"{container}: not an N5 container (N5 is a folder)")
    check_metadata_files(container, key, (_ATTRIBUTES,))  # a half-written one is refused
    node = container / key if key else container
    attrs = _attributes(node) if node.is_dir() else None
    if _is_dataset(attrs):
        return key, attrs, None  # type: ignore[return-value]
    if _is_multiscale(attrs) and node.is_dir():
        level = _attributes(node / "s0") if (node / "s0").is_dir() else None
        if not _is_dataset(level):
            raise DataError(
                f"{where}: an N5 multiscale group without a readable level s0; the dataset is "
                f"{_WRITING}"
            )
        return f"{key}/s0".strip("/"), level, attrs  # type: ignore[return-value]
    if _has_chunks(node):
        raise DataError(
            f"{node}: N5 data blocks but no dataset attributes.json; the dataset is {_WRITING}"
        )
    raise DataError(_missing(where, key, node.is_dir(), n5_datasets(container), "/"))


class N5Source(_ArraySource):
    """The dataset ``key`` of an N5 container (``store.n5/key``), or a multiscale group's
    ``s0``, as a lazy ``(Z, Y, X)`` source (see the module docstring for axes and voxel size).

    Raises:
        DataError: ``key`` missing or a group (the datasets that exist are listed), 4D/5D
            data with extra axes longer than 1, half-written metadata, tensorstore missing or
            unable to open the dataset.
    """

    def __init__(self, path: Path, key: str) -> None:
        where = Path(f"{path}/{key}" if key else str(path))
        key, attrs, group = _resolve(path, key, where)
        ts = _tensorstore(where)
        spec = {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path / key)},
            "recheck_cached_data": "open",
            "context": {"cache_pool": {"total_bytes_limit": _CACHE_BYTES}},
        }
        try:
            store = ts.open(spec, read=True, open=True).result()
        except Exception as err:  # tensorstore raises ValueError / OSError-like statuses
            raise DataError(f"{where}: not a readable N5 dataset ({err})") from err
        voxel = _n5_voxel_size(attrs) or (_n5_voxel_size(group) if group else None)
        super().__init__(where, _ZYXView(store, where), voxel)

    def close(self) -> None:
        self._array = None
