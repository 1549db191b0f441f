"""Intensity normalisation shared by training datasets and inference.

Raw slices are scaled to [0, 1] by their dtype's range (:func:`to_unit_float`) and then
standardised with the training volume's statistics; the statistics and the 2.5D context travel
in every checkpoint as a :class:`Preprocessing`.

``data.mean`` / ``data.std: auto`` are measured on the training slices by
:func:`sample_statistics` with a bounded, seeded sample (the rule is in its docstring), so that
they take seconds even on a huge volume; ``train.py`` writes the measured numbers into the run
config before anything is recorded, so every checkpoint holds numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emseg.errors import ConfigError, DataError

__all__ = [
    "AUTO",
    "IntensityStats",
    "Preprocessing",
    "check_statistic",
    "pooled_statistics",
    "sample_statistics",
    "to_unit_float",
]

AUTO = "auto"
"""The value of ``data.mean`` / ``data.std`` that asks for statistics measured on the data."""

MAX_VOXELS = 2**22
"""Voxels :func:`sample_statistics` draws at most."""

MAX_SLICES = 64
"""Slices :func:`sample_statistics` reads at most."""

SAMPLING_SEED = 0
"""Seed of :func:`sample_statistics`'s voxel draw (fixed: the result is a function of the data)."""


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """Scale integer images to [0, 1] by their dtype's maximum; float images pass through.

    Returns:
        float32 array of the same shape.
    """
    if array.dtype.kind in "ui":
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    return array.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Preprocessing:
    """The input normalisation of a trained network.

    Attributes:
        context: neighbouring slices on each side stacked as channels (0 = plain 2D).
        mean, std: statistics of the [0, 1]-scaled training volume.
    """

    context: int
    mean: float
    std: float

    @property
    def in_channels(self) -> int:
        """``2 * context + 1`` network input channels."""
        return 2 * self.context + 1

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """Normalise raw slices ``(..., Y, X)``: ``(to_unit_float(x) - mean) / std``, float32."""
        return (to_unit_float(slices) - np.float32(self.mean)) / np.float32(self.std)


@dataclass(frozen=True)
class IntensityStats:
    """Mean and standard deviation of [0, 1]-scaled intensities and what they were measured on.

    Attributes:
        mean, std: statistics of the scaled voxels (float64 accumulation).
        voxels: number of voxels sampled.
        slices: number of slices read.
        exact: every voxel of the volume was used (no sampling).
    """

    mean: float
    std: float
    voxels: int
    slices: int
    exact: bool


def check_statistic(key: str, value: object) -> float | None:
    """Validate ``data.mean`` / ``data.std``: a finite number (``std`` positive) or ``auto``.

    Args:
        key: the config key, e.g. ``"data.std"``, named in the error.
        value: the configured value.

    Returns:
        The number as a float, or ``None`` for ``auto`` (to be measured).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    positive = key.endswith("std")
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    valid = valid and math.isfinite(value) and (value > 0 or not positive)
    if not valid:
        what = "a positive number" if positive else "a finite number"
        raise ConfigError(f"{key} must be {what} or '{AUTO}', got {value!r}")
    return float(value)


def _slice_indices(depth: int, max_slices: int) -> np.ndarray:
    """``min(depth, max_slices)`` slice indices evenly spaced over ``[0, depth)``, ends included."""
    count = min(depth, max_slices)
    return np.unique(np.round(np.linspace(0, depth - 1, count)).astype(np.int64))


def sample_statistics(
    volume: Sequence[np.ndarray] | np.ndarray,
    max_voxels: int = MAX_VOXELS,
    max_slices: int = MAX_SLICES,
    seed: int = SAMPLING_SEED,
) -> IntensityStats:
    """Mean and std of ``to_unit_float(volume)`` from a bounded, seeded sample.

    The rule: read at most ``max_slices`` slices, evenly spaced in z (first and last included);
    from each, take ``max_voxels // slices_read`` pixels drawn uniformly with replacement by
    ``numpy.random.default_rng(seed)``, or every pixel if the slice has no more than that.
    A volume of at most ``max_slices`` slices and ``max_voxels`` voxels is therefore measured
    exactly (equal to numpy's mean / std up to float rounding); a larger one from at most
    ``max_voxels`` voxels, whose standard error is about ``std / sqrt(voxels)`` plus the
    between-slice variation that the evenly spaced slices leave out.

    Args:
        volume: ``(Z, Y, X)`` array, or anything with ``len`` and ``volume[z] -> (Y, X)``
            (a :class:`emseg.io.VolumeSource` or its ``z_range`` view), read slice by slice.
        max_voxels, max_slices, seed: the sampling budget and seed.

    Returns:
        The statistics and the number of voxels and slices they come from.

    Raises:
        DataError: the volume has no slices.
    """
    depth = len(volume)
    if depth == 0:
        raise DataError("cannot measure intensity statistics of a volume with no slices")
    indices = _slice_indices(depth, max_slices)
    per_slice = max(1, max_voxels // len(indices))
    rng = np.random.default_rng(seed)
    samples, exact = [], depth <= max_slices
    for z in indices:
        pixels = np.asarray(volume[int(z)]).ravel()
        if pixels.size > per_slice:
            pixels = pixels[rng.integers(0, pixels.size, per_slice)]
            exact = False
        samples.append(to_unit_float(pixels))
    values = np.concatenate(samples)
    return IntensityStats(
        mean=float(values.mean(dtype=np.float64)),
        std=float(values.std(dtype=np.float64)),
        voxels=int(values.size),
        slices=len(indices),
        exact=exact,
    )


def pooled_statistics(parts: Sequence[IntensityStats]) -> IntensityStats:
    """The statistics of several samples taken together (each weighted by its voxels).

    One sample is returned unchanged, so a single training volume measures as before.
    """
    if len(parts) == 1:
        return parts[0]
    voxels = sum(p.voxels for p in parts)
    mean = sum(p.voxels * p.mean for p in parts) / voxels
    second = sum(p.voxels * (p.std**2 + p.mean**2) for p in parts) / voxels
    return IntensityStats(
        mean=float(mean),
        std=float(math.sqrt(max(second - mean**2, 0.0))),
        voxels=int(voxels),
        slices=sum(p.slices for p in parts),
        exact=all(p.exact for p in parts),
    )
