"""The volume I/O seam: lazy sources (block reads, validation), atomic sinks, format registry."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from emseg.errors import ConfigError, DataError
from emseg.io import (
    CheckpointError,
    atomic_paths,
    check_output_path,
    create_sink,
    open_volume,
    read_checkpoint,
    resolve_checkpoint_path,
    write_json_atomic,
)
from tests.conftest import run_script


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, data)
    return path, data


def test_source_reads_blocks_and_slices_like_numpy(volume):
    path, data = volume
    with open_volume(path) as source:
        assert source.shape == (6, 40, 50) and source.dtype == np.uint8 and source.ndim == 3
        np.testing.assert_array_equal(source.read(), data)
        np.testing.assert_array_equal(
            source.read(slice(2, 5), slice(3, 9), slice(10, 20)), data[2:5, 3:9, 10:20]
        )
        np.testing.assert_array_equal(source.read(1, slice(None), 7), data[1, :, 7])
        np.testing.assert_array_equal(source[-1], data[-1])
        view = source.z_range(2, 10)  # clipped to the volume
        assert len(view) == 4 and view.shape == (4, 40, 50)
        np.testing.assert_array_equal(view[0], data[2])
        np.testing.assert_array_equal(view.read(), data[2:])
        with pytest.raises(IndexError):
            source.read(6)
        with pytest.raises(IndexError):
            view[4]


def test_voxel_size_is_read_from_imagej_metadata(tmp_path):
    path = tmp_path / "scaled.tif"
    data = np.zeros((3, 8, 8), np.uint8)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.005, 1 / 0.005),
        metadata={"spacing": 0.05, "unit": "um"},
    )
    with open_volume(path) as source:
        assert source.voxel_size == pytest.approx((50.0, 5.0, 5.0))  # nm, (z, y, x)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    with open_volume(tmp_path / "plain.tif") as source:
        assert source.voxel_size is None


def test_truncated_uncompressed_tiff_is_refused_at_open(tmp_path):
    """The first 5,000 bytes of a 3 x 96 x 128 uint8 stack: one clear DataError, no traceback."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.zeros((3, 96, 128), np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut.tif: truncated TIFF"):
        open_volume(cut)


def test_predict_on_a_truncated_tiff_prints_one_line(tmp_path, capsys, tiny_checkpoint):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.zeros((3, 96, 128), np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:5000])
    args = [f"ckpt_path={tiny_checkpoint}", f"input={cut}", f"output={tmp_path / 'o.tif'}"]
    code, err = run_script("predict.py", args, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: {cut}: truncated TIFF: image data extends to "
        f"byte {err.split('byte ')[1].split()[0]} but the file "
        "has 5000 bytes"
    ]
    assert not (tmp_path / "o.tif").exists()


def test_unsupported_formats_name_the_supported_ones(tmp_path):
    (tmp_path / "v.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported input format '.png'; supported: .tif"):
        open_volume(tmp_path / "v.png")
    with pytest.raises(DataError, match=r"unsupported output format '.n5'"):
        create_sink(tmp_path / "out.n5", (1, 4, 4), np.uint8)


def test_a_mask_must_be_uint8_or_bool(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 5, 6), np.uint16))
    with pytest.raises(DataError, match="unsupported mask dtype uint16"):
        open_volume(tmp_path / "m.tif", "mask")
    open_volume(tmp_path / "m.tif", "image").close()  # the same file is a valid image


@pytest.mark.parametrize("ndim", [2, 3])
def test_sink_appears_only_when_committed(tmp_path, ndim):
    data = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)[: 1 if ndim == 2 else 2]
    path = tmp_path / "out.tif"
    with create_sink(path, data.shape, np.uint8, ndim) as sink:
        sink.write(data[0])
        assert not path.exists() and sink.tmp_path.exists()
        if ndim == 3:
            sink.write(data[1:], z0=1)
        sink.commit()
    assert sorted(os.listdir(tmp_path)) == ["out.tif"]
    written = tifffile.imread(path)
    assert written.shape == (data.shape[1:] if ndim == 2 else data.shape)
    np.testing.assert_array_equal(written.reshape(data.shape), data)


def test_an_unfinished_or_failed_sink_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.tif"
    path.write_bytes(b"old")
    with create_sink(path, (3, 4, 4), np.uint8) as sink:  # left without commit: aborted
        sink.write(np.zeros((4, 4), np.uint8))
    with pytest.raises(RuntimeError, match="1 of 3 slices"):
        with create_sink(path, (3, 4, 4), np.uint8) as sink:
            sink.write(np.zeros((4, 4), np.uint8))
            sink.commit()  # incomplete: refused
    with pytest.raises(ValueError, match="z order"):
        with create_sink(path, (3, 4, 4), np.uint8) as sink:
            sink.write(np.zeros((1, 4, 4), np.uint8), z0=2)
    with pytest.raises(ValueError, match="does not fit"):
        with create_sink(path, (3, 4, 4), np.uint8) as sink:
            sink.write(np.zeros((4, 5), np.uint8))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.tif"]


def test_atomic_paths_commit_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.bin"
    with pytest.raises(KeyError):
        with atomic_paths(first, second) as (a, b):
            a.write_text("{}")
            raise KeyError("half-way")
    assert os.listdir(tmp_path) == []
    with atomic_paths(first, second) as (a, b):
        a.write_text("{}")
        b.write_bytes(b"1")
        assert a.suffix == ".json" and a.name.startswith(".")  # hidden, format suffix kept
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]
    write_json_atomic(first, {"x": 1})
    assert first.read_text() == '{\n  "x": 1\n}\n'


def test_output_path_checks(tmp_path, volume):
    path, _ = volume
    with pytest.raises(ConfigError, match="out: directory .*nowhere does not exist"):
        check_output_path(tmp_path / "nowhere" / "o.tif", "out", False)
    with pytest.raises(ConfigError, match="is also an input"):
        check_output_path(path, "out", True, [path])
    with pytest.raises(ConfigError, match="already exists; pass overwrite=true"):
        check_output_path(path, "out", False)
    check_output_path(tmp_path / "new.tif", "out", False)


def test_checkpoint_reader_and_run_directories(tmp_path):
    import torch

    with pytest.raises(CheckpointError, match="ckpt_path: .*file not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"a": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        read_checkpoint(tmp_path / "w.pt")
    torch.save({"state_dict": {"net.w": torch.ones(2)}}, tmp_path / "ok.ckpt")
    assert float(read_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["net.w"].sum()) == 2
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"expected one checkpoints/best-\*.ckpt .*none"):
        resolve_checkpoint_path(run)
    best = run / "checkpoints" / "best-epoch003-fg_iou0.5000.ckpt"
    best.write_bytes(b"x")
    assert resolve_checkpoint_path(run) == best
    assert resolve_checkpoint_path(tmp_path / "ok.ckpt") == tmp_path / "ok.ckpt"


# --- HDF5, Zarr, slice folders -------------------------------------------------------------------


def _ome_attrs(scale: list[float]) -> dict:
    names = ["t", "c", "z", "y", "x"]
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in names]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    return {"multiscales": [{"axes": axes, "datasets": [level]}]}


def _write_all_formats(tmp_path, data):
    """The same volume as TIFF, HDF5, Zarr, OME-Zarr and a PNG slice folder."""
    import h5py
    import zarr
    from PIL import Image

    tifffile.imwrite(tmp_path / "v.tif", data)
    with h5py.File(tmp_path / "v.h5", "w") as file:
        file["volumes/raw"] = data
        file["volumes/raw"].attrs["resolution"] = [40.0, 4.0, 4.0]
        file["volumes/other"] = np.zeros((2, 3))
    group = zarr.open_group(tmp_path / "v.zarr", mode="w")
    group.create_array("raw", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))[:] = data
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    ome.create_array("0", shape=(1, 1, *data.shape), dtype=data.dtype)[:] = data[None, None]
    ome.attrs.update(_ome_attrs([1, 1, 0.05, 0.005, 0.005]))
    (tmp_path / "slices").mkdir()
    for z, page in enumerate(data):
        Image.fromarray(page).save(tmp_path / "slices" / f"s{z * 5}.png")  # s10 after s5
    return {
        "tiff": str(tmp_path / "v.tif"),
        "hdf5": f"{tmp_path / 'v.h5'}:volumes/raw",
        "zarr": str(tmp_path / "v.zarr" / "raw"),
        "ome-zarr": str(tmp_path / "ome.zarr"),
        "folder": str(tmp_path / "slices"),
        "glob": str(tmp_path / "slices" / "*.png"),
    }


def test_every_format_reads_the_same_volume(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (4, 32, 40), dtype=np.uint8)
    specs = _write_all_formats(tmp_path, data)
    voxels = {}
    for name, spec in specs.items():
        with open_volume(spec) as source:
            assert source.shape == data.shape and source.dtype == np.uint8, name
            np.testing.assert_array_equal(source.read(), data, err_msg=name)
            np.testing.assert_array_equal(
                source.read(slice(1, 3), slice(5, 9), 7), data[1:3, 5:9, 7]
            )
            np.testing.assert_array_equal(source[3], data[3], err_msg=name)
            voxels[name] = source.voxel_size
    assert voxels["hdf5"] == pytest.approx((40.0, 4.0, 4.0))
    assert voxels["ome-zarr"] == pytest.approx((50.0, 5.0, 5.0))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("v.h5:nope", r"no array 'nope'; arrays in the file: volumes/other, volumes/raw"),
        ("v.h5", r"no array named, and not just one; arrays in the file"),
        ("v.h5:volumes", r"'volumes' is a group, not an array"),
        ("missing.h5:raw", r"missing.h5: file not found"),
        ("v.zarr/nope", r"no array 'nope'; arrays in the file: raw"),
        ("v.zarr", r"is a group, not an array; arrays in the file: raw"),
        ("none.zarr/raw", r"none.zarr: Zarr store not found"),
        ("empty/*.png", r"no slice images"),
    ],
)
def test_store_errors_name_what_exists(tmp_path, spec, message):
    _write_all_formats(tmp_path, np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(DataError, match=message):
        open_volume(f"{tmp_path}/{spec}")


def test_slice_folders_refuse_mismatched_slices_and_stores_extra_axes(tmp_path):
    import zarr
    from PIL import Image

    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a1.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "mixed" / "a2.png")
    with open_volume(tmp_path / "mixed") as source:
        with pytest.raises(DataError, match=r"a2.png: slice \(8, 9\) uint8 differs from the first"):
            source.read()
    store = zarr.open_group(tmp_path / "c.zarr", mode="w")
    store.create_array("two_channels", shape=(2, 3, 8, 8), dtype="uint8")
    with pytest.raises(DataError, match=r"more than 3 axes of length > 1"):
        open_volume(tmp_path / "c.zarr" / "two_channels")


def test_predict_reads_any_format_the_same(tmp_path, capsys, tiny_checkpoint):
    """predict.py on the HDF5 / Zarr / slice-folder copies writes the TIFF input's output."""
    data = np.random.default_rng(5).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    specs = _write_all_formats(tmp_path, data)
    outputs = {}
    for name in ("tiff", "hdf5", "zarr", "folder"):
        out = tmp_path / f"probs_{name}.tif"
        args = [f"ckpt_path={tiny_checkpoint}", f"input={specs[name]}", f"output={out}"]
        code, err = run_script("predict.py", [*args, "progress=false"], tmp_path, capsys)
        assert code == 0, err
        outputs[name] = tifffile.imread(out)
    assert outputs["tiff"].shape == data.shape
    for name in ("hdf5", "zarr", "folder"):
        np.testing.assert_array_equal(outputs[name], outputs["tiff"], err_msg=name)


def test_an_ome_zarr_level_is_chosen_by_name_with_its_voxel_size(tmp_path):
    """``store.zarr`` is level 0; ``store.zarr/1`` is level 1, with level 1's voxel size."""
    import zarr

    data = (np.arange(4 * 16 * 16) % 251).astype(np.uint8).reshape(4, 16, 16)
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    ome.create_array("0", shape=data.shape, dtype=data.dtype)[:] = data
    ome.create_array("1", shape=(4, 8, 8), dtype=data.dtype)[:] = data[:, ::2, ::2]
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    levels = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": s}]}
        for i, s in enumerate([[50, 5, 5], [50, 10, 10]])
    ]
    ome.attrs.update({"multiscales": [{"version": "0.4", "axes": axes, "datasets": levels}]})
    with open_volume(tmp_path / "ome.zarr") as level0, open_volume(f"{tmp_path}/ome.zarr/1") as one:
        assert level0.shape == (4, 16, 16) and level0.voxel_size == pytest.approx((50, 5, 5))
        assert one.shape == (4, 8, 8) and one.voxel_size == pytest.approx((50, 10, 10))
        np.testing.assert_array_equal(one.read(), data[:, ::2, ::2])
