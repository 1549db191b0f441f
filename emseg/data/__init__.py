"""Data: reading and validating volumes, patch datasets, augmentation, the DataModule."""

from emseg.data.datamodule import EMDataModule
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
