"""Volume and file I/O: every read and write of a file in emseg goes through this package.

* :mod:`~emseg.io.source`: the lazy :class:`VolumeSource` (shape, dtype, voxel size, read a
  block) and every input check;
* :mod:`~emseg.io.sink`: the atomic :class:`VolumeSink` and the output-path checks;
* :mod:`~emseg.io.tiff`: the TIFF implementations (tifffile);
* :mod:`~emseg.io.arrays_on_disk`, :mod:`~emseg.io.n5`, :mod:`~emseg.io.slices`: HDF5 and Zarr
  (h5py, zarr), N5 (tensorstore), folders of 2D slices;
* :mod:`~emseg.io.units`: voxel sizes, ``(z, y, x)`` nm from the formats' units;
* :mod:`~emseg.io.formats`: :func:`open_volume` / :func:`create_sink`, the format registry;
* :mod:`~emseg.io.arrays`: whole volumes as arrays (:func:`read_image`, :func:`read_mask`);
* :mod:`~emseg.io.atomic`: whole-or-nothing writes, the one atomic-write helper;
* :mod:`~emseg.io.checkpoint`: the one checkpoint reader.
"""

from emseg.io.arrays import read_image, read_mask, read_pair
from emseg.io.atomic import atomic_path, atomic_paths, write_json_atomic
from emseg.io.formats import create_sink, open_volume
from emseg.io.sink import VolumeSink, check_output_path
from emseg.io.source import VolumeSource

# The checkpoint reader needs torch; it is imported on first use, so that the volume I/O (the
# object tools and their blockwise workers, measure.py) starts without torch (~2 s).
_CHECKPOINT_NAMES = ("CheckpointError", "read_checkpoint", "resolve_checkpoint_path")


def __getattr__(name: str):
    if name in _CHECKPOINT_NAMES:
        from emseg.io import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'emseg.io' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "VolumeSink",
    "VolumeSource",
    "atomic_path",
    "atomic_paths",
    "check_output_path",
    "create_sink",
    "open_volume",
    "read_checkpoint",
    "read_image",
    "read_mask",
    "read_pair",
    "resolve_checkpoint_path",
    "write_json_atomic",
]
