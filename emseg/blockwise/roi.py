"""``roi=``: the region of interest of a blockwise prediction, in voxels or in world units.

``roi=[[z0, z1], [y0, y1], [x0, x1]]`` (stops exclusive; ``null`` for a whole axis, e.g.
``roi=[[100, 300], null, null]``) in voxels of the input, or with ``roi_unit=nm`` / ``um`` in
physical coordinates of the input's voxel grid (voxel ``i`` spans ``[i, i + 1) x size``): a
range covers every voxel it touches. The store then holds only the region, placed in the
input's coordinates by its OME-Zarr translation; the region's voxels equal the same voxels of
a whole-volume prediction (the 2.5D context, the median and the sliding windows still see the
input around the region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from emseg.errors import ConfigError

__all__ = ["ROI_UNITS", "Roi", "parse_roi"]

# Units of roi= and their size in nanometres (voxel: the input's own grid).
ROI_UNITS = {"voxel": None, "nm": 1.0, "um": 1000.0}
Roi = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def parse_roi(
    roi: Any,
    unit: str,
    shape: Sequence[int],
    voxel_size: Sequence[float] | None,
) -> Roi:
    """The ``((z0, z1), (y0, y1), (x0, x1))`` voxels of ``roi`` within a ``shape`` volume.

    Args:
        roi: ``None`` (the whole volume) or three ``[start, stop]`` pairs / ``None`` (z, y, x).
        unit: one of :data:`ROI_UNITS`.
        shape: the input's ``(Z, Y, X)``.
        voxel_size: the input's ``(z, y, x)`` in nm (needed for a physical unit).

    Raises:
        ConfigError: a malformed ROI, an unknown unit, a physical unit without a voxel size,
            or a range that is empty or not within the volume (naming the axis).
    """
    if unit not in ROI_UNITS:
        raise ConfigError(f"roi_unit must be one of {', '.join(ROI_UNITS)}, got {unit!r}")
    whole = tuple((0, int(s)) for s in shape)
    if roi is None:
        return whole  # type: ignore[return-value]
    if isinstance(roi, str) or not isinstance(roi, Sequence) or len(roi) != 3:
        raise ConfigError(f"roi must be three [start, stop] ranges (z, y, x) or null, got {roi!r}")
    scale = ROI_UNITS[unit]
    if scale is not None and voxel_size is None:
        raise ConfigError(
            f"roi_unit={unit}: the input records no voxel size; give roi in voxels (roi_unit=voxel)"
        )
    ranges = []
    for axis, (item, size) in enumerate(zip(roi, shape, strict=True)):
        name = "zyx"[axis]
        if item is None:
            ranges.append((0, int(size)))
            continue
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise ConfigError(f"roi: the {name} range must be [start, stop] or null, got {item!r}")
        try:
            start, stop = (float(v) for v in item)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"roi: the {name} range must be numbers, got {item!r}") from err
        if scale is not None:
            per_voxel = float(voxel_size[axis]) / scale  # type: ignore[index]
            first, last = math.floor(start / per_voxel), math.ceil(stop / per_voxel)
        elif start != int(start) or stop != int(stop):
            raise ConfigError(f"roi: voxel ranges must be integers, got {name} {item!r}")
        else:
            first, last = int(start), int(stop)
        if not 0 <= first < last <= int(size):
            where = f" ({item[0]}-{item[1]} {unit})" if scale is not None else ""
            raise ConfigError(
                f"roi: {name} {first}-{last} (stop exclusive){where} is empty or outside the "
                f"volume's 0-{int(size)}"
            )
        ranges.append((first, last))
    return tuple(ranges)  # type: ignore[return-value]
