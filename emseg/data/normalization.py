"""Intensity normalisation shared by training datasets and inference.

Raw slices are scaled to [0, 1] by their dtype's range (:func:`to_unit_float`) and then
standardised with the training volume's statistics; the statistics and the 2.5D context travel
in every checkpoint as a :class:`Preprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Preprocessing", "to_unit_float"]


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
