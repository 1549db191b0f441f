"""Instance label volumes (uint32 / uint64 ``(Z, Y, X)``) written whole, atomically.

The formats are the ones probabilities are written in:

* ``labels.tif``: through the TIFF :class:`~emseg.io.tiff.TiffSink` (slice by slice, ImageJ /
  tifffile calibration of the voxel size);
* ``labels.h5:key``: one HDF5 dataset (gzip chunks, ``resolution`` attribute = ``(z, y, x)``
  nm, read back by :class:`~emseg.io.arrays_on_disk.HDF5Source`), the whole file written to a
  temporary sibling and renamed;
* ``labels.zarr`` or ``store.zarr/key``: an OME-Zarr image group (one level ``0``, scale =
  voxel size in nanometres). A new store is written to a temporary sibling and renamed; a key
  inside an existing store (e.g. ``out.zarr/instances`` beside a blockwise prediction) is
  written to a temporary group in that store and renamed into place.

An existing output is refused unless ``overwrite``; it is replaced only by a complete new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from emseg.errors import ConfigError
from emseg.io.atomic import atomic_path, temporary_sibling
from emseg.io.formats import create_sink, parse_volume
from emseg.io.sink import check_output_path, check_writable_directory

__all__ = ["check_label_output", "ome_label_attrs", "replace_directory", "write_labels"]

_CHUNKS = (32, 256, 256)


def check_label_output(spec: str, key: str, overwrite: bool) -> None:
    """Refuse a label output that cannot be written (before any work): see
    :func:`~emseg.io.sink.check_output_path`; ``key`` is the config key, for the message."""
    kind, path, inner = parse_volume(spec)
    if kind == "slices":
        raise ConfigError(f"{key}: {spec} is a folder; give labels.tif, labels.h5:key or .zarr")
    if kind in ("file", "hdf5"):
        if kind == "file" and path.suffix.lower() not in (".tif", ".tiff"):
            raise ConfigError(
                f"{key}: unsupported label format {path.suffix or '(no suffix)'!r}; "
                "give labels.tif, labels.h5:key or labels.zarr"
            )
        if kind == "hdf5" and path.exists():
            if not overwrite:
                raise ConfigError(
                    f"{key}: {path} already exists; pass overwrite=true to replace it"
                )
            _check_replaceable_h5(path, inner or "labels", key)
        check_output_path(path, key, overwrite or kind == "hdf5")
        return
    if kind == "n5":
        raise ConfigError(f"{key}: N5 is read-only in emseg; give a .zarr, .h5 or .tif output")
    target = path / inner if inner else path
    if target.exists() and not overwrite:
        raise ConfigError(f"{key}: {target} already exists; pass overwrite=true to replace it")
    parent = path.parent if not inner or not path.exists() else target.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}: directory {parent} does not exist")
    check_writable_directory(parent, key)


def _check_replaceable_h5(path: Path, inner: str, key: str) -> None:
    """The file is rewritten whole: refuse one holding datasets other than ``inner``."""
    import h5py

    from emseg.io.arrays_on_disk import _h5_datasets

    try:
        with h5py.File(path, "r") as file:
            others = [name for name in _h5_datasets(file) if name != inner]
    except OSError as err:
        raise ConfigError(f"{key}: {path} exists and is not a readable HDF5 file") from err
    if others:
        raise ConfigError(
            f"{key}: {path} also holds {', '.join(others[:3])}; labels are written as a whole "
            "new file: choose another file name"
        )


def ome_label_attrs(name: str, voxel_size: tuple[float, float, float] | None) -> dict:
    unit = {"unit": "nanometer"} if voxel_size else {}
    scale = [float(v) for v in voxel_size] if voxel_size else [1.0, 1.0, 1.0]
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": axis, "type": "space", **unit} for axis in "zyx"],
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ],
    }


def _write_zarr_group(
    directory: Path, labels: np.ndarray, name: str, voxel_size: tuple | None
) -> None:
    import zarr

    group = zarr.open_group(str(directory), mode="w", zarr_format=3)
    chunks = tuple(min(c, s) for c, s in zip(_CHUNKS, labels.shape, strict=True))
    array = group.create_array("0", shape=labels.shape, dtype=labels.dtype, chunks=chunks)
    array[...] = labels
    group.attrs["ome"] = ome_label_attrs(name, voxel_size)


def replace_directory(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` (a directory); an old ``final`` is removed only after the
    new one is complete."""
    if final.exists():
        old = temporary_sibling(final, ".old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_labels(
    spec: str,
    labels: np.ndarray,
    voxel_size: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    key: str = "labels_output",
) -> Path:
    """Write ``labels`` (``(Z, Y, X)`` uint32 / uint64) to ``spec`` whole-or-nothing.

    Returns:
        The file or store directory written.

    Raises:
        ConfigError: an unsupported output, a missing directory, an existing output without
            ``overwrite``.
    """
    check_label_output(spec, key, overwrite)
    kind, path, inner = parse_volume(spec)
    if labels.dtype not in (np.uint32, np.uint64):
        labels = labels.astype(np.uint32)
    if kind == "file":
        with create_sink(path, labels.shape, labels.dtype, 3, voxel_size=voxel_size) as sink:
            sink.write(labels)
            sink.commit()
        return path
    if kind == "hdf5":
        import h5py

        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as file:
                chunks = tuple(min(c, s) for c, s in zip(_CHUNKS, labels.shape, strict=True))
                data = file.create_dataset(
                    inner or "labels", data=labels, chunks=chunks, compression="gzip"
                )
                if voxel_size is not None:
                    data.attrs["resolution"] = [float(v) for v in voxel_size]
        return path
    name = inner.rsplit("/", 1)[-1] if inner else path.stem
    final = path / inner if inner and path.exists() else path
    if inner and not path.exists():  # a new store holding the group at ``inner``
        tmp_store = temporary_sibling(path)
        try:
            import zarr

            zarr.open_group(str(tmp_store), mode="w", zarr_format=3)
            _write_zarr_group(tmp_store / inner, labels, name, voxel_size)
            os.replace(tmp_store, path)
        finally:
            shutil.rmtree(tmp_store, ignore_errors=True)
        return path / inner
    tmp = temporary_sibling(final)
    try:
        _write_zarr_group(tmp, labels, name, voxel_size)
        replace_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
