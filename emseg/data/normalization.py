"""Intensity normalisation shared by training datasets and inference.

Raw slices are scaled to [0, 1] by their dtype's range (:func:`to_unit_float`) and then
standardised with the training volume's statistics; the statistics and the 2.5D context travel
in every checkpoint as a :class:`Preprocessing`.

``data.mean`` / ``data.std: auto`` are measured on the training slices by
:func:`sample_statistics` with a bounded, seeded sample (the rule is in its docstring), so that
they take seconds even on a huge volume; ``train.py`` writes the measured numbers into the run
config before anything is recorded, so every checkpoint holds numbers.

``data.percentiles: [low, high]`` (e.g. ``[1, 99.8]``; default ``null``) adds a per-volume step
for data from several microscopes: every volume (training, validation, test, and each volume
given to eval.py / predict.py) is first mapped by its own percentiles of the [0, 1]-scaled
intensities, ``clip((x - p_low) / (p_high - p_low), 0, 1)`` (:func:`map_intensities`), measured
by :func:`sample_percentiles` with the same bounded, seeded sample as the statistics; ``mean`` /
``std`` are then those of the mapped training slices. The mapping is clipped because the
brightness / contrast augmentation clamps its images to [0, 1]: unclipped outliers would be
cut in training but not at inference. The checkpoint records the percentiles (not the measured
values), and :meth:`Preprocessing.for_volume` measures them on the volume being predicted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from emseg.errors import ConfigError, DataError

__all__ = [
    "AUTO",
    "IntensityRange",
    "IntensityStats",
    "Preprocessing",
    "check_percentiles",
    "check_statistic",
    "map_intensities",
    "pooled_statistics",
    "sample_percentiles",
    "sample_statistics",
    "to_unit_float",
]

log = logging.getLogger(__name__)

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


def map_intensities(unit: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """Map [0, 1]-scaled intensities by a volume's percentiles: ``clip((x-lo) / (hi-lo), 0, 1)``.

    Args:
        unit: float32 intensities of any shape (``to_unit_float`` of a volume's voxels).
        intensity_range: ``(lo, hi)``, the volume's low / high percentiles on the same scale
            (``hi > lo``).

    Returns:
        float32 array of the same shape, in [0, 1].
    """
    low, high = (np.float32(v) for v in intensity_range)
    return np.clip((unit - low) / (high - low), np.float32(0), np.float32(1))


@dataclass(frozen=True)
class Preprocessing:
    """The input normalisation of a trained network.

    Attributes:
        context: neighbouring slices on each side stacked as channels (0 = plain 2D).
        mean, std: statistics of the [0, 1]-scaled training volume (of the percentile-mapped
            one when ``percentiles`` is set).
        percentiles: ``(low, high)`` in [0, 100] when every volume is first mapped by its own
            percentiles (:func:`map_intensities`); ``None``: no per-volume mapping.
        intensity_range: the measured ``(p_low, p_high)`` of the one volume this instance
            normalises (:meth:`for_volume`); ``None`` until measured.
    """

    context: int
    mean: float
    std: float
    percentiles: tuple[float, float] | None = None
    intensity_range: tuple[float, float] | None = None

    @property
    def in_channels(self) -> int:
        """``2 * context + 1`` network input channels."""
        return 2 * self.context + 1

    def for_volume(
        self, volume: Sequence[np.ndarray] | np.ndarray, name: str = ""
    ) -> Preprocessing:
        """This normalisation bound to ``volume``: its percentiles measured (and logged).

        Args:
            volume: ``(Z, Y, X)`` array or lazy source (``len`` and ``volume[z] -> (Y, X)``);
                the percentiles are sampled by :func:`sample_percentiles`.
            name: the volume, for the log.

        Returns:
            ``self`` without ``percentiles`` or when already bound; otherwise a copy holding
            the measured ``intensity_range``.
        """
        if self.percentiles is None or self.intensity_range is not None:
            return self
        measured = sample_percentiles(volume, self.percentiles, name=name)
        return replace(self, intensity_range=(measured.low, measured.high))

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """Normalise raw slices ``(..., Y, X)``: ``(to_unit_float(x) - mean) / std``, float32;
        with ``percentiles``, ``to_unit_float(x)`` is first mapped by the volume's
        ``intensity_range`` (:meth:`for_volume` must have measured it).

        Raises:
            ValueError: ``percentiles`` set but not measured on the volume.
        """
        unit = to_unit_float(slices)
        if self.percentiles is not None:
            if self.intensity_range is None:
                raise ValueError(
                    "percentile normalisation needs the volume's percentiles: call "
                    "Preprocessing.for_volume(volume) first"
                )
            unit = map_intensities(unit, self.intensity_range)
        return (unit - np.float32(self.mean)) / np.float32(self.std)


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


@dataclass(frozen=True)
class IntensityRange:
    """A volume's low and high percentiles of its [0, 1]-scaled intensities.

    Attributes:
        low, high: the measured percentiles (``high > low``).
        percentiles: the ``(low, high)`` percentages they were measured at.
        voxels, slices, exact: as in :class:`IntensityStats`.
    """

    low: float
    high: float
    percentiles: tuple[float, float]
    voxels: int
    slices: int
    exact: bool


def check_percentiles(value: object, key: str = "data.percentiles") -> tuple[float, float] | None:
    """Validate ``data.percentiles``: ``None`` or ``[low, high]`` with ``0 <= low < high <= 100``.

    Args:
        value: the configured value (a list, tuple or ListConfig).
        key: the config key, named in the error.

    Returns:
        ``(low, high)`` as floats, or ``None``.

    Raises:
        ConfigError: anything else (wrong length, not numbers, out of [0, 100], low >= high).
    """
    if value is None:
        return None
    pair = (
        list(value)
        if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)
        else None
    )
    ok = pair is not None and len(pair) == 2
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair
    )
    ok = ok and 0.0 <= pair[0] < pair[1] <= 100.0
    if not ok:
        raise ConfigError(
            f"{key} must be null or [low, high] percentiles with 0 <= low < high <= 100 "
            f"(e.g. [1, 99.8]), got {value!r}"
        )
    return float(pair[0]), float(pair[1])


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


def _sample_voxels(
    volume: Sequence[np.ndarray] | np.ndarray, max_voxels: int, max_slices: int, seed: int
) -> tuple[np.ndarray, int, bool]:
    """The bounded, seeded voxel sample of :func:`sample_statistics` (its docstring's rule).

    Returns:
        ``(values, slices read, exact)``: ``values`` the sampled voxels as float32 ``(N,)``
        scaled by :func:`to_unit_float`.

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
    return np.concatenate(samples), len(indices), exact


def sample_statistics(
    volume: Sequence[np.ndarray] | np.ndarray,
    max_voxels: int = MAX_VOXELS,
    max_slices: int = MAX_SLICES,
    seed: int = SAMPLING_SEED,
    intensity_range: tuple[float, float] | None = None,
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
        intensity_range: the volume's percentiles ``(lo, hi)``: measure the statistics of the
            mapped intensities (:func:`map_intensities`) instead.

    Returns:
        The statistics and the number of voxels and slices they come from.

    Raises:
        DataError: the volume has no slices.
    """
    values, slices, exact = _sample_voxels(volume, max_voxels, max_slices, seed)
    if intensity_range is not None:
        values = map_intensities(values, intensity_range)
    return IntensityStats(
        mean=float(values.mean(dtype=np.float64)),
        std=float(values.std(dtype=np.float64)),
        voxels=int(values.size),
        slices=slices,
        exact=exact,
    )


def sample_percentiles(
    volume: Sequence[np.ndarray] | np.ndarray,
    percentiles: tuple[float, float],
    max_voxels: int = MAX_VOXELS,
    max_slices: int = MAX_SLICES,
    seed: int = SAMPLING_SEED,
    name: str = "",
) -> IntensityRange:
    """The ``percentiles`` of ``to_unit_float(volume)``, sampled as by :func:`sample_statistics`.

    The same slices and voxels as :func:`sample_statistics` (so seconds even on a huge store);
    percentiles by numpy's default (linear) interpolation. Logged at INFO with ``name``.

    Args:
        volume: ``(Z, Y, X)`` array or lazy source, as for :func:`sample_statistics`.
        percentiles: ``(low, high)`` in [0, 100], ``low < high``.
        max_voxels, max_slices, seed: the sampling budget and seed.
        name: the volume, for the log and the error.

    Raises:
        DataError: the volume has no slices, or both percentiles are equal (an almost
            constant volume: the mapping would divide by zero).
    """
    values, slices, exact = _sample_voxels(volume, max_voxels, max_slices, seed)
    low, high = (float(v) for v in np.percentile(values, percentiles))
    where = name or "the volume"
    origin = f"{values.size} {'' if exact else 'sampled '}voxels of {slices} slices"
    if not high > low:
        raise DataError(
            f"{where}: the percentiles {percentiles[0]:g} and {percentiles[1]:g} of its "
            f"intensities are both {low:.6g} ({origin}): the volume is almost constant; widen "
            "data.percentiles or set data.percentiles=null"
        )
    log.info(
        "%s: intensity percentiles p%g = %.6f, p%g = %.6f of the [0, 1]-scaled image (%s)",
        where,
        percentiles[0],
        low,
        percentiles[1],
        high,
        origin,
    )
    return IntensityRange(
        low, high, (float(percentiles[0]), float(percentiles[1])), int(values.size), slices, exact
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
