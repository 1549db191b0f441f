"""N5 volumes, bad input at the io layer (extra axes, slice folders, half-written stores), and
voxel sizes read from every format and written into outputs (issue 17)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emseg.errors import DataError
from emseg.io import create_sink, open_volume
from emseg.io.n5 import n5_datasets
from emseg.io.units import nm_per_unit, voxel_or_none
from tests.conftest import run_script

ts = pytest.importorskip("tensorstore")


def _write_n5(path: Path, data: np.ndarray, block: tuple[int, ...], **attrs) -> None:
    """``data`` (``(..., Z, Y, X)``) as an N5 dataset written by tensorstore, N5 order x first."""
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "dimensions": list(data.shape[::-1]),
            "blockSize": list(block[::-1]),
            "dataType": str(data.dtype),
            "compression": {"type": "gzip"},
        },
        "create": True,
        "delete_existing": True,
    }
    ts.open(spec).result()[...] = data.T
    if attrs:
        file = path / "attributes.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), **attrs}))


def _write_n5_by_hand(path: Path, data: np.ndarray) -> None:
    """``data`` (``(Z, Y, X)`` uint16) as a one-block raw N5 dataset, following the N5 spec
    byte by byte (no library): dimensions x first, big-endian header and samples."""
    path.mkdir(parents=True)
    dims = list(data.shape[::-1])
    attrs = {"dimensions": dims, "blockSize": dims, "dataType": "uint16"}
    (path / "attributes.json").write_text(json.dumps({**attrs, "compression": {"type": "raw"}}))
    header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *dims)
    (path / "0" / "0").mkdir(parents=True)
    (path / "0" / "0" / "0").write_bytes(header + data.astype(">u2").tobytes())  # x fastest


@pytest.fixture
def n5_store(tmp_path):
    """``s.n5`` with ``em/raw`` (uint16, anisotropic resolution), a group and a pyramid."""
    data = np.random.default_rng(1).integers(0, 60000, (5, 12, 20), dtype=np.uint16)
    store = tmp_path / "s.n5"
    _write_n5(store / "em" / "raw", data, (2, 8, 8), resolution=[4.0, 5.0, 40.0])
    (store / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    return store, data


# --- N5 ------------------------------------------------------------------------------------------


def test_n5_reads_as_zyx_with_the_voxel_size_reversed(n5_store):
    store, data = n5_store
    assert json.loads((store / "em/raw/attributes.json").read_text())["dimensions"] == [20, 12, 5]
    with open_volume(f"{store}/em/raw") as source:
        assert source.shape == (5, 12, 20) and source.dtype == np.uint16
        np.testing.assert_array_equal(source.read(), data)
        np.testing.assert_array_equal(source.read(slice(1, 4), slice(3, 11), 7), data[1:4, 3:11, 7])
        np.testing.assert_array_equal(source[4], data[4])
        assert source.voxel_size == pytest.approx((40.0, 5.0, 4.0))  # resolution is x, y, z


def test_n5_written_by_the_spec_reads_as_zyx(tmp_path):
    """Independent of tensorstore: a block laid out by hand as the N5 spec says."""
    data = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6) * 7
    _write_n5_by_hand(tmp_path / "h.n5" / "raw", data)
    with open_volume(tmp_path / "h.n5" / "raw") as source:
        assert source.shape == (3, 4, 6)
        np.testing.assert_array_equal(source.read(), data)
        assert source.voxel_size is None


@pytest.mark.parametrize(
    ("attrs", "voxel"),
    [
        ({"pixelResolution": {"dimensions": [0.004, 0.005, 0.05], "unit": "um"}}, (50, 5, 4)),
        ({"resolution": [8, 8, 30], "units": ["nm", "nm", "nm"]}, (30, 8, 8)),
        ({"resolution": [8, 8, 30], "units": ["nm", "um", "nm"]}, None),
        ({"pixelResolution": {"dimensions": [1, 1, 1], "unit": "pixel"}}, None),
    ],
)
def test_n5_voxel_size_conventions(tmp_path, attrs, voxel):
    _write_n5(tmp_path / "v.n5" / "raw", np.zeros((2, 8, 8), np.uint8), (2, 8, 8), **attrs)
    with open_volume(tmp_path / "v.n5" / "raw") as source:
        assert source.voxel_size == (pytest.approx(voxel) if voxel else None)


def test_n5_attributes_tensorstore_refuses_are_one_error(tmp_path):
    """tensorstore validates ``resolution`` itself: a 2-number one for 3D data is refused."""
    _write_n5(tmp_path / "v.n5" / "raw", np.zeros((2, 8, 8), np.uint8), (2, 8, 8))
    attrs = tmp_path / "v.n5" / "raw" / "attributes.json"
    attrs.write_text(json.dumps({**json.loads(attrs.read_text()), "resolution": [8, 8]}))
    with pytest.raises(DataError, match=r"v.n5/raw: not a readable N5 dataset \(.*resolution"):
        open_volume(tmp_path / "v.n5" / "raw")


def test_units_as_formats_spell_them():
    assert [nm_per_unit(u) for u in ("nm", "\u00b5m", "\u03bcm", "\\u00B5m", "Micron")] == [
        1.0,
        1e3,
        1e3,
        1e3,
        1e3,
    ]
    assert nm_per_unit("pixel") is None and nm_per_unit(None) is None
    assert voxel_or_none(np.array([4, 4, 40.0]), 1.0) == (4.0, 4.0, 40.0)
    assert voxel_or_none([4, 4], 1.0) is None and voxel_or_none("440", 1.0) is None


def test_n5_multiscale_group_means_s0(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    group = tmp_path / "p.n5" / "raw"
    _write_n5(group / "s0", data, (4, 8, 8))
    _write_n5(group / "s1", data[:, ::2, ::2], (4, 8, 8))
    pixel = {"dimensions": [6.0, 6.0, 30.0], "unit": "nm"}
    scales = [[1, 1, 1], [2, 2, 1]]
    (group / "attributes.json").write_text(
        json.dumps({"multiScale": True, "scales": scales, "pixelResolution": pixel})
    )
    with open_volume(f"{tmp_path}/p.n5/raw") as source:
        np.testing.assert_array_equal(source.read(), data)
        assert source.voxel_size == pytest.approx((30.0, 6.0, 6.0))
    (group / "s0" / "attributes.json").unlink()
    with pytest.raises(DataError, match=r"p.n5/raw: an N5 multiscale group without a readable"):
        open_volume(f"{tmp_path}/p.n5/raw")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("em/nope", r"s.n5/em/nope: no array 'em/nope'; arrays in the file: em/raw \(give one as"),
        ("em", r"s.n5/em: 'em' is a group, not an array; arrays in the file: em/raw"),
        ("", r"s.n5: is a group, not an array; arrays in the file: em/raw"),
    ],
)
def test_n5_missing_dataset_or_group_lists_the_datasets(n5_store, key, message):
    store, _ = n5_store
    with pytest.raises(DataError, match=message):
        open_volume(f"{store}/{key}" if key else store)


def test_n5_store_not_found_or_not_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"none.n5: N5 store not found"):
        open_volume(tmp_path / "none.n5" / "raw")
    (tmp_path / "file.n5").write_bytes(b"x")
    with pytest.raises(DataError, match=r"file.n5: not an N5 container"):
        open_volume(tmp_path / "file.n5" / "raw")


def _read_in_fork(source, queue) -> None:
    try:
        queue.put(int(source.read().sum()))
    except DataError as err:
        queue.put(str(err))


def test_n5_in_a_forked_worker_is_one_error_not_an_abort(n5_store):
    """tensorstore aborts a forked child that calls it; the source refuses first, clearly."""
    import multiprocessing

    store, data = n5_store
    with open_volume(f"{store}/em/raw") as source:
        source.read(0)  # tensorstore's threads now run in this process
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_read_in_fork, args=(source, queue))
        child.start()
        message = queue.get(timeout=60)
        child.join(timeout=60)
    assert child.exitcode == 0
    assert (
        "cannot be read in a process forked after N5 was read; start workers with spawn" in message
    )


def test_n5_dataset_listing_skips_blocks(n5_store):
    store, _ = n5_store
    _write_n5(store / "em" / "mito", np.zeros((2, 8, 8), np.uint8), (1, 8, 8))
    assert n5_datasets(store) == ["em/mito", "em/raw"]


# --- bad input: extra axes -----------------------------------------------------------------------


def _extra_axes_volume(tmp_path: Path, fmt: str, shape: tuple[int, ...]) -> str:
    """A uint8 array of ``shape`` (``(..., Z, Y, X)``) as HDF5, Zarr or N5; its volume string."""
    import h5py
    import zarr

    data = np.ones(shape, np.uint8)
    if fmt == "hdf5":
        with h5py.File(tmp_path / "x.h5", "w") as file:
            file["a"] = data
        return f"{tmp_path / 'x.h5'}:a"
    if fmt == "zarr":
        zarr.open_group(tmp_path / "x.zarr", mode="w").create_array(
            "a", shape=shape, dtype="uint8"
        )[:] = data
        return str(tmp_path / "x.zarr" / "a")
    _write_n5(tmp_path / "x.n5" / "a", data, (1,) * (len(shape) - 2) + (8, 8))
    return str(tmp_path / "x.n5" / "a")


@pytest.mark.parametrize("fmt", ["hdf5", "zarr", "n5"])
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, 8, 8), r"array of shape \(2, 3, 8, 8\) has more than 3 axes of length > 1"),
        ((1, 2, 3, 8, 8), r"shape \(1, 2, 3, 8, 8\) has more than 3 axes of length > 1"),
        ((3, 1, 8, 8), r"shape \(3, 1, 8, 8\) has an axis of length 1 between longer axes"),
    ],
)
def test_extra_axes_are_refused_naming_file_and_key(tmp_path, fmt, shape, message):
    spec = _extra_axes_volume(tmp_path, fmt, shape)
    with pytest.raises(DataError, match=message) as info:
        open_volume(spec)
    assert str(info.value).startswith(spec.replace(str(tmp_path), str(tmp_path)))


@pytest.mark.parametrize("fmt", ["hdf5", "zarr", "n5"])
@pytest.mark.parametrize("shape", [(1, 1, 3, 8, 8), (3, 8, 8, 1)])
def test_singleton_time_channel_axes_are_dropped(tmp_path, fmt, shape):
    with open_volume(_extra_axes_volume(tmp_path, fmt, shape)) as source:
        assert source.shape == (3, 8, 8)
        assert source.read().sum() == 3 * 8 * 8


# --- bad input: slice folders --------------------------------------------------------------------


def test_slice_folders_without_images_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    for spec in (tmp_path / "empty", tmp_path / "notes", f"{tmp_path}/notes/*.tif"):
        with pytest.raises(DataError, match=r"no slice images \(.tif, .tiff, .png"):
            open_volume(spec)


def test_slice_folders_refuse_a_slice_of_another_dtype(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "z1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(folder / "z2.tif", np.zeros((8, 8), np.uint16))
    with open_volume(folder) as source:
        source.read(0)
        with pytest.raises(DataError, match=r"z2.tif: slice \(8, 8\) uint16 differs from the"):
            source.read()


# --- bad input: stores being written -------------------------------------------------------------


def _zarr_store(tmp_path: Path, zarr_format: int) -> Path:
    import zarr

    group = zarr.open_group(tmp_path / "w.zarr", mode="w", zarr_format=zarr_format)
    array = group.create_array("raw", shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint8")
    array[:] = 1
    return tmp_path / "w.zarr"


@pytest.mark.parametrize(("zarr_format", "name"), [(3, "zarr.json"), (2, ".zarray")])
def test_zarr_half_written_metadata_is_one_clear_error(tmp_path, zarr_format, name):
    store = _zarr_store(tmp_path, zarr_format)
    metadata = store / "raw" / name
    text = metadata.read_text()
    metadata.write_text(text[: len(text) // 2])  # a writer stopped half-way
    with pytest.raises(DataError, match=rf"raw/{name}: metadata is not valid JSON .*being written"):
        open_volume(store / "raw")
    metadata.write_text("")
    with pytest.raises(DataError, match=rf"raw/{name}: metadata is not valid JSON"):
        open_volume(store / "raw")


@pytest.mark.parametrize(("zarr_format", "name"), [(3, "zarr.json"), (2, ".zgroup")])
def test_zarr_half_written_group_metadata_is_refused(tmp_path, zarr_format, name):
    store = _zarr_store(tmp_path, zarr_format)
    (store / name).write_text("{")
    with pytest.raises(DataError, match=rf"w.zarr/{name}: metadata is not valid JSON"):
        open_volume(store / "raw")


@pytest.mark.parametrize(("zarr_format", "name"), [(3, "zarr.json"), (2, ".zarray")])
def test_zarr_chunks_without_array_metadata_are_refused(tmp_path, zarr_format, name):
    store = _zarr_store(tmp_path, zarr_format)
    (store / "raw" / name).unlink()  # chunks are there, the metadata is not (yet)
    with pytest.raises(DataError, match=r"raw: chunk files but no array metadata .*being written"):
        open_volume(store / "raw")


def test_ome_zarr_level_listed_but_missing_is_refused(tmp_path):
    import zarr

    group = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    group.create_array("1", shape=(2, 4, 4), dtype="uint8")
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1] * 3}]}
    group.attrs["multiscales"] = [{"axes": axes, "datasets": [level]}]
    with pytest.raises(DataError, match=r"lists level '0', which has no array metadata"):
        open_volume(tmp_path / "ome.zarr")


def test_a_truncated_chunk_is_refused_when_read(tmp_path):
    store = _zarr_store(tmp_path, 3)
    chunk = store / "raw" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])
    with open_volume(store / "raw") as source:
        np.testing.assert_array_equal(source.read(slice(0, 2)), 1)
        with pytest.raises(DataError, match=r"raw: cannot read slices 2-3 .*chunk is corrupt"):
            source.read(slice(2, 4))


def test_n5_half_written_attributes_or_blocks_only_are_refused(n5_store):
    store, _ = n5_store
    attrs = store / "em" / "raw" / "attributes.json"
    text = attrs.read_text()
    attrs.write_text(text[:10])
    with pytest.raises(DataError, match=r"em/raw/attributes.json: metadata is not valid JSON"):
        open_volume(f"{store}/em/raw")
    attrs.unlink()
    with pytest.raises(DataError, match=r"em/raw: N5 data blocks but no dataset attributes"):
        open_volume(f"{store}/em/raw")


# --- voxel size: TIFF / ImageJ reading, sinks ----------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "scale"), [("nm", 1.0), ("micron", 1e3), ("\\u00B5m", 1e3), ("um", 1e3)]
)
def test_tiff_voxel_size_in_imagej_units(tmp_path, unit, scale):
    path = tmp_path / "cal.tif"
    metadata = {"spacing": 0.05 * 1e3 / scale, "unit": unit}
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(scale / 4.0, scale / 5.0),  # pixels per unit: x 4 nm, y 5 nm
        metadata=metadata,
    )
    with open_volume(path) as source:
        assert source.voxel_size == pytest.approx((50.0, 5.0, 4.0))


def test_tiff_voxel_size_not_recorded(tmp_path):
    data = np.zeros((3, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "dpi.tif", data, resolution=(72, 72), resolutionunit=2)  # inch
    tifffile.imwrite(tmp_path / "px.tif", data, imagej=True, resolution=(1, 1))  # unit: pixel
    for name in ("dpi.tif", "px.tif"):
        with open_volume(tmp_path / name) as source:
            assert source.voxel_size is None, name
    # A plain (non-ImageJ) stack in centimetres: x and y known, z not recorded.
    tifffile.imwrite(tmp_path / "cm.tif", data, resolution=(1e7 / 4, 1e7 / 4), resolutionunit=3)
    with open_volume(tmp_path / "cm.tif") as source:
        assert source.voxel_size is None
    tifffile.imwrite(
        tmp_path / "cm2d.tif", data[0], resolution=(1e7 / 4, 1e7 / 4), resolutionunit=3
    )
    with open_volume(tmp_path / "cm2d.tif") as source:
        assert source.voxel_size == pytest.approx((4.0, 4.0, 4.0))


@pytest.mark.parametrize(
    ("shape", "dtype", "ndim", "imagej"),
    [
        ((3, 8, 9), np.uint8, 3, True),
        ((4, 8, 9), np.float32, 3, True),
        ((3, 8, 9), np.float16, 3, False),  # ImageJ has no float16: tifffile's JSON description
        ((1, 8, 9), np.uint8, 2, True),
        ((1, 8, 9), np.uint8, 3, False),
    ],
)
def test_tiff_sink_writes_the_voxel_size_back(tmp_path, shape, dtype, ndim, imagej):
    data = (np.arange(np.prod(shape)).reshape(shape) % 200).astype(dtype)
    voxel = (45.0, 4.5, 3.25)
    path = tmp_path / "out.tif"
    with create_sink(path, shape, dtype, ndim, voxel_size=voxel) as sink:
        sink.write(data)
        sink.commit()
    with open_volume(path) as source:
        assert source.voxel_size == pytest.approx(voxel)
        assert source.ndim == ndim
        np.testing.assert_array_equal(source.read(), data)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej == imagej
        assert tif.series[0].shape == (shape if ndim == 3 else shape[1:])
        if imagej:  # what ImageJ / Fiji shows: a z stack (not channels) in nm
            meta = tif.imagej_metadata
            assert meta["unit"] == "nm" and meta["spacing"] == pytest.approx(45.0)
            assert meta.get("slices", 1) == shape[0] and "channels" not in meta


def test_tiff_sink_without_voxel_size_records_none(tmp_path):
    with create_sink(tmp_path / "o.tif", (3, 8, 8), np.uint8) as sink:
        sink.write(np.zeros((3, 8, 8), np.uint8))
        sink.commit()
    with open_volume(tmp_path / "o.tif") as source:
        assert source.voxel_size is None
    with pytest.raises(ValueError, match=r"voxel_size \(0, 1, 1\) is not 3 positive numbers"):
        create_sink(tmp_path / "bad.tif", (3, 8, 8), np.uint8, voxel_size=(0, 1, 1))


def test_predict_outputs_carry_the_input_voxel_size(tmp_path, capsys, tiny_checkpoint):
    """An N5 input with a resolution: probabilities and mask TIFFs record the same voxel size."""
    data = np.random.default_rng(5).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    _write_n5(tmp_path / "in.n5" / "raw", data, (1, 32, 32), resolution=[6.0, 6.0, 35.0])
    probs, mask = tmp_path / "probs.tif", tmp_path / "mask.tif"
    args = [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'in.n5' / 'raw'}"]
    args += [f"output={probs}", f"mask_output={mask}", "postprocess.min_size=4", "progress=false"]
    code, err = run_script("predict.py", args, tmp_path, capsys)
    assert code == 0, err
    for path in (probs, mask):
        with open_volume(path, "mask" if path == mask else "image") as source:
            assert source.shape == data.shape
            assert source.voxel_size == pytest.approx((35.0, 6.0, 6.0)), path.name
