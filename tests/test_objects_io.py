"""Label volumes written and read back; the object tools' inputs and their refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from emseg.errors import ConfigError, DataError
from emseg.io import open_volume
from emseg.io.label_volumes import write_labels
from emseg.objects.volumes import load_objects_input, truth_instances


def _labels() -> np.ndarray:
    labels = np.zeros((3, 8, 9), np.uint32)
    labels[0, 1:3, 1:3] = 1
    labels[1:3, 4:7, 5:8] = 70000  # beyond uint16
    return labels


@pytest.mark.parametrize("name", ["l.tif", "l.h5:seg/instances", "l.zarr", "s.zarr/instances"])
def test_write_labels_round_trip(tmp_path: Path, name: str) -> None:
    spec = str(tmp_path / name)
    write_labels(spec, _labels(), (50.0, 5.0, 5.0))
    with open_volume(spec, "labels") as source:
        assert source.dtype == np.uint32
        assert np.array_equal(source.read(), _labels())
        assert source.voxel_size == pytest.approx((50.0, 5.0, 5.0))
    with pytest.raises(ConfigError, match="already exists; pass overwrite=true"):
        write_labels(spec, _labels())
    write_labels(spec, _labels() * 2, overwrite=True)
    with open_volume(spec, "labels") as source:
        assert source.read().max() == 140000


def test_zarr_group_inside_an_existing_store(tmp_path: Path) -> None:
    import zarr

    store = tmp_path / "out.zarr"
    zarr.open_group(str(store), mode="w").create_array("probabilities", shape=(2,), dtype="u1")
    write_labels(f"{store}/instances", _labels())
    assert (store / "probabilities").exists()
    with open_volume(f"{store}/instances", "labels") as source:
        assert np.array_equal(source.read(), _labels())


def test_label_output_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported label format"):
        write_labels(str(tmp_path / "l.png"), _labels())
    with pytest.raises(ConfigError, match="does not exist"):
        write_labels(str(tmp_path / "missing" / "l.tif"), _labels())


def test_hdf5_with_other_datasets_is_not_replaced(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as file:
        file["raw"] = np.zeros((2, 4, 5), np.uint8)
    with pytest.raises(ConfigError, match="also holds raw"):
        write_labels(f"{path}:labels", _labels(), overwrite=True)
    with h5py.File(path, "r") as file:
        assert list(file) == ["raw"]


def test_input_kinds(tmp_path: Path) -> None:
    probs = tmp_path / "p.tif"
    tifffile.imwrite(probs, np.array([[[0, 100, 200, 0, 0]]], np.uint8))
    got = load_objects_input(str(probs))
    assert got.kind == "probabilities" and got.mask.tolist() == [
        [[False, False, True, False, False]]
    ]
    mask = tmp_path / "m.tif"
    tifffile.imwrite(mask, np.array([[[0, 255, 255, 0, 0]]], np.uint8))
    assert load_objects_input(str(mask)).kind == "mask"
    labels = tmp_path / "l.tif"
    tifffile.imwrite(labels, np.array([[[0, 3, 3, 0, 9]]], np.uint16))
    assert load_objects_input(str(labels)).kind == "labels"
    assert truth_instances(str(mask)).tolist() == [[[0, 1, 1, 0, 0]]]
    assert truth_instances(str(labels)).tolist() == [[[0, 3, 3, 0, 9]]]


def test_input_refusals(tmp_path: Path) -> None:
    negative = tmp_path / "n.tif"
    tifffile.imwrite(negative, np.array([[[0, -1, 2, 0, 0]]], np.int16))
    with pytest.raises(DataError, match="must be >= 0"):
        load_objects_input(str(negative))
    floats = tmp_path / "f.tif"
    tifffile.imwrite(floats, np.array([[[0, 1.5, 0, 0, 0]]], np.float32))
    with pytest.raises(DataError, match="must be integers"):
        load_objects_input(str(floats), "labels")
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        load_objects_input(str(floats))
    probs = tmp_path / "p.tif"
    tifffile.imwrite(probs, np.array([[[0, 100, 200, 0, 0]]], np.uint8))
    with pytest.raises(DataError, match="looks like probabilities"):
        truth_instances(str(probs))
    with pytest.raises(ConfigError, match="input_kind"):
        load_objects_input(str(probs), "voxels")
