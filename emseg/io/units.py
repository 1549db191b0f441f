"""Voxel sizes: length units as formats spell them, and ``(z, y, x)`` nanometre triples.

Every source reports ``voxel_size`` as ``(z, y, x)`` in nanometres, or ``None`` when the file
does not record a physical size; the formats' own units (ImageJ's ``micron`` or ``\\u00B5m``,
OME-NGFF's ``micrometer``, N5 viewer's ``um``) are converted here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["nm_per_unit", "voxel_or_none"]

_NM_PER_UNIT = {
    **dict.fromkeys(("nm", "nanometer", "nanometre", "nanometers", "nanometres"), 1.0),
    **dict.fromkeys(("um", "\u00b5m", "\u03bcm", "\\u00b5m", "micron", "microns"), 1e3),
    **dict.fromkeys(("micrometer", "micrometre", "micrometers", "micrometres"), 1e3),
    **dict.fromkeys(("mm", "millimeter", "millimetre"), 1e6),
    **dict.fromkeys(("\u00e5", "angstrom"), 0.1),
}


def nm_per_unit(unit: object) -> float | None:
    """Nanometres per ``unit`` (``nm``, ``um``, ``µm``, ``micron``, ImageJ's ``\\u00B5m`` ...),
    or ``None`` for a missing or unknown unit (pixels, inches: no physical size recorded)."""
    return _NM_PER_UNIT.get(str(unit or "").strip().lower())


def voxel_or_none(values: object, scale: float | None) -> tuple[float, float, float] | None:
    """Three numbers ``values``, already in ``(z, y, x)`` order, times ``scale`` nm per unit.

    ``None`` unless ``scale`` is known and ``values`` are exactly three finite, positive
    numbers (a 2D or 4D resolution, a zero or a string records no usable voxel size).
    """
    if scale is None or isinstance(values, str | bytes) or not isinstance(values, Iterable):
        return None
    try:
        numbers = [float(v) * scale for v in values]
    except (TypeError, ValueError):
        return None
    if len(numbers) != 3 or not all(np.isfinite(v) and v > 0 for v in numbers):
        return None
    return numbers[0], numbers[1], numbers[2]
