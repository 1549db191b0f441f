"""Data: patch datasets, normalisation, augmentation, the DataModule (files: :mod:`emseg.io`).

``EMDataModule`` is imported lazily so that inference code, which needs only the readers and
the normalisation, does not pull in Lightning.
"""

from typing import Any

from emseg.data.dataset import RandomPatchDataset, SliceDataset
from emseg.data.normalization import Preprocessing, to_unit_float

__all__ = [
    "EMDataModule",
    "Preprocessing",
    "RandomPatchDataset",
    "SliceDataset",
    "to_unit_float",
]


def __getattr__(name: str) -> Any:
    if name == "EMDataModule":
        from emseg.data.datamodule import EMDataModule

        return EMDataModule
    raise AttributeError(f"module 'emseg.data' has no attribute {name!r}")
