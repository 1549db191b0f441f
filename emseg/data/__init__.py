"""Data: reading and validating volumes, patch datasets, augmentation, the DataModule.

``EMDataModule`` is imported lazily so that inference code, which needs only the readers and
the normalisation, does not pull in Lightning.
"""

from typing import Any

from emseg.data.dataset import RandomPatchDataset, SliceDataset
from emseg.data.volume import read_mask, read_pair, read_volume

__all__ = [
    "EMDataModule",
    "RandomPatchDataset",
    "SliceDataset",
    "read_mask",
    "read_pair",
    "read_volume",
]


def __getattr__(name: str) -> Any:
    if name == "EMDataModule":
        from emseg.data.datamodule import EMDataModule

        return EMDataModule
    raise AttributeError(f"module 'emseg.data' has no attribute {name!r}")
