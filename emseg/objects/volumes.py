"""What the object tools read: a probability volume, a binary mask or an instance label volume.

:func:`load_objects_input` reads one whole ``(Z, Y, X)`` volume (through
:func:`emseg.io.open_volume`) and says what it is:

* ``probabilities``: float in [0, 1], or uint8 = round(255 p) (predict.py's output);
* ``mask``: bool, or uint8 holding only {0, 1} or {0, 255};
* ``labels``: instance ids (uint16 and wider integers, or any integer with ``kind=labels``).

``kind=auto`` decides by dtype and values as listed; an explicit kind is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from emseg.errors import ConfigError, DataError
from emseg.io import open_volume
from emseg.io.source import VolumeSource

__all__ = [
    "KINDS",
    "ObjectsInput",
    "kind_of",
    "load_objects_input",
    "open_objects_input",
    "probabilities_of",
    "truth_instances",
]

KINDS = ("auto", "probabilities", "mask", "labels")


@dataclass
class ObjectsInput:
    """A volume read for the object tools; exactly one of ``probability`` / ``mask`` /
    ``labels`` describes it (``mask`` is also set for probabilities: above the threshold)."""

    path: Path
    kind: str
    voxel_size: tuple[float, float, float] | None
    probability: np.ndarray | None = None
    mask: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        for array in (self.labels, self.mask, self.probability):
            if array is not None:
                return tuple(array.shape)  # type: ignore[return-value]
        raise AssertionError("empty input")


def open_objects_input(spec: str) -> VolumeSource:
    """``spec`` opened lazily, whatever its dtype (integer ids, uint8 masks, float data)."""
    try:
        return open_volume(spec, "labels")
    except DataError as err:
        if "unsupported labels dtype" not in str(err):
            raise
        return open_volume(spec, "image")  # float data


def _read(spec: str) -> tuple[np.ndarray, Path, tuple[float, float, float] | None]:
    with open_objects_input(spec) as source:
        return source.read(), source.path, source.voxel_size


def _values(array: np.ndarray) -> set[int]:
    if array.dtype == np.uint8:
        return set(np.flatnonzero(np.bincount(array.ravel(), minlength=256)).tolist())
    return set()


def probabilities_of(array: np.ndarray, path: Path | str) -> np.ndarray:
    """``array`` as float32 probabilities: float as it is (checked to be in [0, 1]), uint8 /
    uint16 divided by 255 / 65535 (predict.py's round(255 p)).

    Raises:
        DataError: float values outside [0, 1], or another dtype.
    """
    dtype = array.dtype
    if dtype.kind == "f":
        probability = array.astype(np.float32, copy=False)
        if probability.size and (probability.min() < 0 or probability.max() > 1):
            raise DataError(f"{path}: probabilities must be in [0, 1]")
        return probability
    if dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / float(np.iinfo(dtype).max)
    raise DataError(f"{path}: {dtype} data cannot be probabilities (uint8, uint16 or float)")


def kind_of(dtype: np.dtype, uint8_values: set[int]) -> str:
    """What ``input_kind=auto`` reads a volume as: bool -> mask, float -> probabilities, uint8
    -> mask if its ``uint8_values`` are {0, 1} or {0, 255} else probabilities, other integers
    -> labels."""
    if dtype == np.bool_:
        return "mask"
    if dtype.kind == "f":
        return "probabilities"
    if dtype == np.uint8:
        values = {int(v) for v in uint8_values}
        return "mask" if values <= {0, 1} or values <= {0, 255} else "probabilities"
    return "labels"


def load_objects_input(
    spec: str, kind: str = "auto", threshold: float = 0.5, key: str = "input"
) -> ObjectsInput:
    """Read ``spec`` whole and classify it (see the module docstring).

    Raises:
        ConfigError: an unknown ``kind``.
        DataError: negative or float ids, probabilities outside [0, 1], a mask with other
            values, a kind that does not fit the data.
    """
    if kind not in KINDS:
        raise ConfigError(f"{key}_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    array, path, voxel = _read(spec)
    dtype = array.dtype
    if kind == "auto":
        kind = kind_of(dtype, _values(array) if dtype == np.uint8 else set())
    if kind == "labels":
        if dtype.kind == "f":
            raise DataError(f"{path}: instance ids must be integers, got {dtype} values")
        if dtype.kind == "i" and array.size and int(array.min()) < 0:
            raise DataError(f"{path}: instance ids must be >= 0, found {int(array.min())}")
        labels = array.astype(np.uint64 if dtype.itemsize == 8 else np.uint32, copy=False)
        return ObjectsInput(path, kind, voxel, labels=labels)
    if kind == "mask":
        if dtype != np.bool_:
            values = _values(array) if dtype == np.uint8 else set(np.unique(array).tolist())
            if not (values <= {0, 1} or values <= {0, 255}):
                raise DataError(
                    f"{path}: a mask holds only {{0, 1}} or {{0, 255}}, found {sorted(values)[:8]}"
                )
        return ObjectsInput(path, kind, voxel, mask=array > 0)
    probability = probabilities_of(array, path)
    return ObjectsInput(
        path, "probabilities", voxel, probability=probability, mask=probability > threshold
    )


def truth_instances(spec: str, connectivity: int = 1, key: str = "truth") -> np.ndarray:
    """True instances of ``spec``: a binary mask's 3D connected components, or its ids.

    Returns:
        ``(Z, Y, X)`` uint32 / uint64 labels.
    """
    truth = load_objects_input(spec, "auto", key=key)
    if truth.kind == "probabilities":
        raise DataError(
            f"{key}: {truth.path} looks like probabilities (uint8 with values other than "
            "{0, 1} / {0, 255}, or float); give a binary mask or instance labels"
        )
    if truth.labels is not None:
        return truth.labels
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, _ = ndimage.label(truth.mask, structure)
    return labels.astype(np.uint32)
