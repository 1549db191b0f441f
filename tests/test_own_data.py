"""Training on one's own data: any volume format, the data template, no test volume."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tifffile
import zarr

from emseg.train import run
from tests.conftest import TINY_OVERRIDES, compose_train


def _copies(data_dir: Path, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """The synthetic training volume and mask as TIFF, HDF5 and Zarr volume strings."""
    image = tifffile.imread(data_dir / "epfl" / "training.tif")
    mask = tifffile.imread(data_dir / "epfl" / "training_groundtruth.tif")
    with h5py.File(tmp_path / "train.h5", "w") as file:
        file["raw"], file["labels"] = image, mask
    store = zarr.open_group(tmp_path / "train.zarr", mode="w")
    store.create_array("raw", shape=image.shape, dtype=image.dtype, chunks=(1, 32, 32))[:] = image
    store.create_array("labels", shape=mask.shape, dtype=mask.dtype)[:] = mask
    return {
        "tiff": (f"{data_dir}/epfl/training.tif", f"{data_dir}/epfl/training_groundtruth.tif"),
        "hdf5": (f"{tmp_path}/train.h5:raw", f"{tmp_path}/train.h5:labels"),
        "zarr": (f"{tmp_path}/train.zarr/raw", f"{tmp_path}/train.zarr/labels"),
    }


def test_the_format_is_invisible_to_training(tmp_path, synthetic_data_dir):
    """The same volume as TIFF, HDF5 and Zarr, same seed: the same losses and metrics."""
    results = {}
    for name, (image, mask) in _copies(synthetic_data_dir, tmp_path).items():
        overrides = [*TINY_OVERRIDES, "data=custom", f"data.train_image={image}"]
        overrides += [f"data.train_mask={mask}", "data.val_slices=2", "logger=none"]
        cfg = compose_train(overrides, tmp_path / name, synthetic_data_dir)
        metrics = run(cfg)
        assert "test/fg_iou" not in metrics  # the template has no test volume: test skipped
        stored = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
        results[name] = {k: v for k, v in stored.items() if "seconds" not in k}
        config = (tmp_path / name / "config.yaml").read_text()
        assert "mean: auto" not in config  # the measured statistics are what is recorded
    assert results["hdf5"] == results["tiff"] and results["zarr"] == results["tiff"]
    assert np.isfinite(results["tiff"]["train/loss"])
