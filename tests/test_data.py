"""Tests of the data layer: TIFF reading and validation, patch sampling, augmentation, the data
module and data preparation. Everything is synthetic and written under ``tmp_path`` except the
two ``real_data`` tests, which read the prepared EPFL volumes (skipped when they are absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torchvision import tv_tensors

from emseg.data import prepare
from emseg.data.datamodule import EMDataModule
from emseg.data.dataset import EpochPatchSampler, RandomPatchDataset, SliceDataset
from emseg.data.normalization import to_unit_float
from emseg.data.transforms import RandomBrightnessContrast, RandomRot90, train_transforms
from emseg.errors import ConfigError, DataError
from emseg.io import read_image as read_volume
from emseg.io import read_mask, read_pair
from tests.conftest import make_volume

# ---------------------------------------------------------------------------------------------
# read_image / read_mask / read_pair (emseg.io)
# ---------------------------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, array, **kwargs)
    return path


def _raises_data_error(func, path: Path, *fragments: str) -> str:
    """Call ``func(path)``; assert a DataError naming ``path`` and every fragment."""
    with pytest.raises(DataError) as info:
        func(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("reader", [read_volume, read_mask])
def test_missing_file(tmp_path, reader):
    _raises_data_error(reader, tmp_path / "nope.tif", "not found")


@pytest.mark.parametrize("reader", [read_volume, read_mask])
def test_directory_instead_of_file(tmp_path, reader):
    _raises_data_error(reader, tmp_path, "directory")


@pytest.mark.parametrize("reader", [read_volume, read_mask])
def test_empty_file(tmp_path, reader):
    path = tmp_path / "empty.tif"
    path.touch()
    _raises_data_error(reader, path, "empty")


@pytest.mark.parametrize("reader", [read_volume, read_mask])
def test_text_file_is_not_a_tiff(tmp_path, reader):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a TIFF file\n" * 10)
    _raises_data_error(reader, path, "not a readable TIFF")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("reader", [read_volume, read_mask])
def test_truncated_tiff(tmp_path, reader, keep):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 2, (8, 64, 64), dtype=np.uint8)  # valid for both readers
    whole = _write(tmp_path / "whole.tif", volume, compression="zlib")
    assert np.array_equal(reader(whole) > 0, volume > 0)  # the intact file is fine
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * keep)])
    message = _raises_data_error(reader, cut)
    assert "TIFF" in message


def test_truncated_tiff_detected_when_tifffile_logger_disabled(tmp_path, monkeypatch):
    """Hydra's job logging can disable existing loggers; truncation must still be caught."""
    import logging

    volume = np.zeros((8, 64, 64), dtype=np.uint8)
    data = _write(tmp_path / "whole.tif", volume, compression="zlib").read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(logging.getLogger("tifffile"), "disabled", True)
    assert "TIFF" in _raises_data_error(read_volume, cut)
    assert logging.getLogger("tifffile").disabled  # restored afterwards


def test_4d_array_rejected(tmp_path):
    path = _write(tmp_path / "4d.tif", np.zeros((2, 3, 16, 16), np.uint8))
    _raises_data_error(read_volume, path, "(2, 3, 16, 16)", "3D (Z, Y, X)")


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_image_rejected(tmp_path, channels):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 40, channels), dtype=np.uint8)
    path = _write(tmp_path / "rgb.tif", rgb)
    _raises_data_error(read_volume, path, "RGB", f"(32, 40, {channels})")
    _raises_data_error(read_mask, path, "RGB")


@pytest.mark.parametrize("values", [(0, 1, 2), (0, 128), (1, 255)])
def test_mask_with_non_binary_values(tmp_path, values):
    mask = np.resize(np.array(values, np.uint8), (2, 8, 8))
    path = _write(tmp_path / "mask.tif", mask)
    message = _raises_data_error(read_mask, path, "{0, 1} or {0, 255}")
    assert str(sorted(values)) in message


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_mask_with_wrong_dtype(tmp_path, dtype):
    path = _write(tmp_path / "mask.tif", np.zeros((2, 8, 8), dtype))
    _raises_data_error(read_mask, path, "dtype", np.dtype(dtype).name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_image_with_nan_or_inf(tmp_path, bad):
    image = np.full((2, 8, 8), 0.5, np.float32)
    image[1, 3, 4] = bad
    path = _write(tmp_path / "image.tif", image)
    _raises_data_error(read_volume, path, "NaN or Inf")


def test_unsupported_image_dtype(tmp_path):
    path = _write(tmp_path / "image.tif", np.zeros((2, 8, 8), np.int32))
    _raises_data_error(read_volume, path, "int32")


def test_read_pair_shape_mismatch(tmp_path):
    image = _write(tmp_path / "image.tif", np.zeros((4, 32, 32), np.uint8))
    mask = _write(tmp_path / "mask.tif", np.zeros((4, 32, 16), np.uint8))
    with pytest.raises(DataError) as info:
        read_pair(image, mask)
    message = str(info.value)
    assert str(image) in message and str(mask) in message
    assert "(4, 32, 32)" in message and "(4, 32, 16)" in message


def test_read_pair_propagates_mask_errors(tmp_path):
    image = _write(tmp_path / "image.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="not found"):
        read_pair(image, tmp_path / "missing_mask.tif")


def test_2d_image_becomes_single_slice_volume(tmp_path):
    image = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    volume = read_volume(_write(tmp_path / "slice.tif", image))
    assert volume.shape == (1, 20, 30)
    assert volume.dtype == np.uint8
    assert np.array_equal(volume[0], image)


@pytest.mark.parametrize("foreground", [1, 255])
def test_binary_masks_become_zero_one(tmp_path, foreground):
    raw = np.zeros((3, 16, 16), np.uint8)
    raw[1, 4:9, 2:7] = foreground
    mask = read_mask(_write(tmp_path / "mask.tif", raw))
    assert mask.dtype == np.uint8
    assert mask.shape == (3, 16, 16)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert np.array_equal(mask, (raw > 0).astype(np.uint8))


def test_all_background_mask_is_valid(tmp_path):
    mask = read_mask(_write(tmp_path / "mask.tif", np.zeros((2, 8, 8), np.uint8)))
    assert mask.dtype == np.uint8 and not mask.any()


def test_uint16_image_accepted_unchanged(tmp_path):
    image = np.random.default_rng(0).integers(0, 65536, (3, 16, 16), dtype=np.uint16)
    volume = read_volume(_write(tmp_path / "image16.tif", image))
    assert volume.dtype == np.uint16
    assert np.array_equal(volume, image)


def test_to_unit_float():
    u8 = to_unit_float(np.array([0, 51, 255], np.uint8))
    u16 = to_unit_float(np.array([0, 65535], np.uint16))
    f64 = to_unit_float(np.array([0.25, 2.0], np.float64))
    assert u8.dtype == u16.dtype == f64.dtype == np.float32
    np.testing.assert_allclose(u8, [0.0, 0.2, 1.0], rtol=1e-6)
    assert u8[-1] == 1.0 and u16[-1] == 1.0 and u16[0] == 0.0
    np.testing.assert_array_equal(f64, [0.25, 2.0])  # floats pass through unscaled


# ---------------------------------------------------------------------------------------------
# Real EPFL data (skipped when not prepared)
# ---------------------------------------------------------------------------------------------


def test_real_data_crop(real_data, tmp_path):
    epfl = real_data / "epfl"
    image_path = _write(
        tmp_path / "image.tif", tifffile.imread(epfl / "training.tif", key=range(0, 4))
    )
    mask_path = _write(
        tmp_path / "mask.tif",
        tifffile.imread(epfl / "training_groundtruth.tif", key=range(0, 4)),
    )
    image, mask = read_pair(image_path, mask_path)
    assert image.shape == mask.shape == (4, 768, 1024)
    assert image.dtype == np.uint8 and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert 0.01 < mask.mean() < 0.15
    assert image.std() > 10  # real EM texture, not a blank image


def test_real_test_mask_foreground_fraction(real_data):
    mask = read_mask(real_data / "epfl" / "testing_groundtruth.tif")
    assert mask.shape == (165, 768, 1024)
    assert mask.mean() == pytest.approx(0.05309, abs=0.001)


# ---------------------------------------------------------------------------------------------
# RandomPatchDataset / SliceDataset
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def toy_volume() -> tuple[np.ndarray, np.ndarray]:
    image, mask = make_volume(depth=8, size=96, seed=0)
    return image, (mask > 0).astype(np.uint8)


def _coded_volume(depth: int = 8, height: int = 48, width: int = 40) -> np.ndarray:
    """A float32 volume whose value encodes the voxel position: z * 10000 + y * 100 + x."""
    z, y, x = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    return (z * 10000 + y * 100 + x).astype(np.float32)


@pytest.mark.parametrize("context", [0, 2])
def test_patch_shapes_and_types(toy_volume, context):
    image, mask = toy_volume
    ds = RandomPatchDataset(image, mask, patch_size=32, length=7, context=context)
    assert len(ds) == 7
    torch.manual_seed(0)
    for i in range(5):
        img, msk = ds[i]
        assert img.shape == (2 * context + 1, 32, 32)
        assert msk.shape == (1, 32, 32)
        assert img.dtype == torch.float32 and msk.dtype == torch.float32
        assert type(img) is torch.Tensor and type(msk) is torch.Tensor
        assert set(torch.unique(msk).tolist()) <= {0.0, 1.0}
        # mean=0, std=1: the image is the uint8 volume scaled to [0, 1]
        assert 0.0 <= img.min() and img.max() <= 1.0


def test_patch_image_mask_alignment_and_context():
    """A position-coded volume shows where each patch came from: the mask patch must be cut
    from the same place, and context channels must be the neighbouring (clamped) slices."""
    image = _coded_volume()
    mask = np.random.default_rng(0).integers(0, 2, image.shape, dtype=np.uint8)
    ds = RandomPatchDataset(image, mask, patch_size=16, length=50, fg_fraction=0.5, context=2)
    torch.manual_seed(0)
    seen_z = set()
    for i in range(50):
        img, msk = ds[i]
        centre = img[2].numpy()
        code = int(centre[0, 0])
        z, y0, x0 = code // 10000, code % 10000 // 100, code % 100
        seen_z.add(z)
        np.testing.assert_array_equal(centre, image[z, y0 : y0 + 16, x0 : x0 + 16])
        np.testing.assert_array_equal(msk[0].numpy(), mask[z, y0 : y0 + 16, x0 : x0 + 16])
        for c, dz in enumerate(range(-2, 3)):
            zc = min(max(z + dz, 0), image.shape[0] - 1)
            np.testing.assert_array_equal(img[c].numpy(), image[zc, y0 : y0 + 16, x0 : x0 + 16])
    assert {0, image.shape[0] - 1} <= seen_z  # the clamped ends were exercised


def test_patch_normalisation():
    image = np.full((2, 16, 16), 51, np.uint8)  # 51 / 255 = 0.2
    mask = np.zeros((2, 16, 16), np.uint8)
    ds = RandomPatchDataset(image, mask, patch_size=8, length=1, mean=0.1, std=0.5)
    img, _ = ds[0]
    torch.testing.assert_close(img, torch.full((1, 8, 8), (0.2 - 0.1) / 0.5))


def test_fg_fraction_one_always_hits_foreground(toy_volume):
    image, mask = toy_volume
    ds = RandomPatchDataset(image, mask, patch_size=16, length=20, fg_fraction=1.0)
    torch.manual_seed(1)
    for i in range(20):
        _, msk = ds[i]
        assert msk.sum() > 0
        assert msk[0, 4:12, 4:12].sum() > 0  # the chosen voxel is near the patch centre


def test_fg_fraction_controls_foreground_share():
    image = np.full((8, 96, 96), 100, np.uint8)
    mask = np.zeros((8, 96, 96), np.uint8)
    mask[3, 40:44, 50:54] = 1  # 16 foreground voxels out of 73728

    def share(fg_fraction: float) -> float:
        ds = RandomPatchDataset(image, mask, patch_size=24, length=40, fg_fraction=fg_fraction)
        torch.manual_seed(0)
        return float(np.mean([ds[i][1].sum().item() > 0 for i in range(40)]))

    assert share(1.0) == 1.0
    assert share(0.0) < 0.3


def test_fg_fraction_with_empty_mask_falls_back_to_uniform():
    image = np.zeros((2, 32, 32), np.uint8)
    mask = np.zeros((2, 32, 32), np.uint8)
    ds = RandomPatchDataset(image, mask, patch_size=16, length=3, fg_fraction=1.0)
    _, msk = ds[0]
    assert msk.shape == (1, 16, 16) and msk.sum() == 0


def test_patch_larger_than_slice_raises(toy_volume):
    image, mask = toy_volume
    with pytest.raises(ValueError, match="patch_size 97"):
        RandomPatchDataset(image, mask, patch_size=97, length=1)
    RandomPatchDataset(image, mask, patch_size=96, length=1)  # exactly the slice size is fine


@pytest.mark.parametrize("transform", [None, train_transforms()])
def test_patch_depends_only_on_seed_and_key(toy_volume, transform):
    """Same (seed, key): same patch, whatever the global RNG and the order of access."""
    image, mask = toy_volume
    ds = RandomPatchDataset(image, mask, patch_size=32, length=6, transform=transform, seed=7)
    torch.manual_seed(0)
    forward = [ds[k] for k in range(6)]
    torch.manual_seed(123)
    backward = [ds[k] for k in reversed(range(6))][::-1]
    for (img1, msk1), (img2, msk2) in zip(forward, backward, strict=True):
        assert torch.equal(img1, img2) and torch.equal(msk1, msk2)
    assert not torch.equal(forward[0][0], forward[1][0])  # another key, another patch
    other_seed = RandomPatchDataset(image, mask, 32, 6, transform=transform, seed=8)
    assert not torch.equal(other_seed[0][0], forward[0][0])


def test_patch_access_leaves_the_global_rng_alone(toy_volume):
    image, mask = toy_volume
    ds = RandomPatchDataset(image, mask, patch_size=32, length=4, transform=train_transforms())
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ds[0], ds[5]
    assert torch.equal(torch.rand(3), expected)


def test_dataset_seed_defaults_to_the_global_generator(toy_volume):
    image, mask = toy_volume
    seeds = []
    for _ in range(2):
        torch.manual_seed(3)
        seeds.append(RandomPatchDataset(image, mask, patch_size=32, length=4).seed)
    assert seeds[0] == seeds[1]


def test_epoch_patch_sampler_keys():
    sampler = EpochPatchSampler(6)
    assert list(sampler) == [0, 1, 2, 3, 4, 5] and len(sampler) == 6
    sampler.set_epoch(2)
    assert list(sampler) == [12, 13, 14, 15, 16, 17]
    assert list(EpochPatchSampler(6, epoch=2)) == list(sampler)  # no dependence on history
    shards = [list(EpochPatchSampler(7, num_replicas=2, rank=r, epoch=1)) for r in range(2)]
    assert shards == [[7, 9, 11], [8, 10, 12]]  # equal, disjoint shards of epoch 1's keys
    with pytest.raises(ValueError):
        EpochPatchSampler(6, num_replicas=2, rank=2)


def test_patch_does_not_modify_volume(toy_volume):
    image, mask = toy_volume
    image_copy, mask_copy = image.copy(), mask.copy()
    ds = RandomPatchDataset(
        image, mask, patch_size=96, length=4, mean=0.5, std=0.1, transform=train_transforms()
    )
    torch.manual_seed(0)
    for i in range(4):
        ds[i]
    assert np.array_equal(image, image_copy) and np.array_equal(mask, mask_copy)


def test_slice_dataset_order_context_and_normalisation():
    image = np.stack([np.full((6, 5), 51 * z, np.uint8) for z in range(4)])  # slice z = 0.2 z
    mask = np.zeros((4, 6, 5), np.uint8)
    mask[2, 1, 1] = 1
    ds = SliceDataset(image, mask, context=1, mean=0.1, std=0.5)
    assert len(ds) == 4
    for z in range(4):
        img, msk = ds[z]
        assert img.shape == (3, 6, 5) and msk.shape == (1, 6, 5)
        assert img.dtype == msk.dtype == torch.float32
        expected = [(0.2 * min(max(z + dz, 0), 3) - 0.1) / 0.5 for dz in (-1, 0, 1)]
        torch.testing.assert_close(img[:, 0, 0], torch.tensor(expected))
        assert msk.sum().item() == (1.0 if z == 2 else 0.0)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


def _image_mask(channels: int = 3, size: int = 24, seed: int = 0):
    """A random binary Mask and an Image whose every channel equals it (as float)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 2, (1, size, size), generator=gen, dtype=torch.uint8)
    image = mask.float().repeat(channels, 1, 1)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def test_geometric_transforms_keep_image_and_mask_aligned():
    pipeline = train_transforms(flips=True, rot90=True, brightness=0.0, contrast=0.0)
    img, msk = _image_mask()
    torch.manual_seed(0)
    changed = 0
    for _ in range(20):
        out_img, out_msk = pipeline(img, msk)
        assert isinstance(out_img, tv_tensors.Image) and isinstance(out_msk, tv_tensors.Mask)
        assert out_img.shape == img.shape and out_msk.shape == msk.shape
        assert out_msk.dtype == torch.uint8
        for c in range(out_img.shape[0]):
            assert torch.equal(out_img[c], out_msk[0].float())
        changed += not torch.equal(out_msk, msk)
    assert changed >= 10  # the pipeline really moved pixels most of the time


def test_brightness_contrast_changes_image_only():
    rng = torch.Generator().manual_seed(0)
    img = tv_tensors.Image(torch.rand((3, 24, 24), generator=rng) * 0.5 + 0.25)
    msk = tv_tensors.Mask(torch.randint(0, 2, (1, 24, 24), generator=rng, dtype=torch.uint8))
    for transform in (
        RandomBrightnessContrast(brightness=0.2, contrast=0.3),
        train_transforms(flips=False, rot90=False, brightness=0.2, contrast=0.3),
    ):
        torch.manual_seed(0)
        for _ in range(5):
            out_img, out_msk = transform(img, msk)
            assert torch.equal(out_msk, msk)
            assert not torch.allclose(out_img, img)
            assert out_img.min() >= 0 and out_img.max() <= 1
            # brightness/contrast is affine per image: pixel order is preserved
            flat_in, flat_out = img.flatten(), out_img.flatten()
            order = torch.argsort(flat_in)
            assert torch.all(torch.diff(flat_out[order]) >= -1e-6)


def test_brightness_contrast_formula(monkeypatch):
    transform = RandomBrightnessContrast(brightness=0.1, contrast=0.5)
    monkeypatch.setattr(transform, "make_params", lambda flat_inputs: {"b": 0.05, "c": 1.5})
    img = tv_tensors.Image(torch.tensor([[[0.2, 0.4], [0.6, 0.8]]]))
    out = transform(img)
    mean = 0.5
    expected = ((img.as_subclass(torch.Tensor) - mean) * 1.5 + mean + 0.05).clamp(0, 1)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected)


def test_brightness_contrast_rejects_bad_ranges():
    with pytest.raises(ValueError):
        RandomBrightnessContrast(brightness=-0.1)
    with pytest.raises(ValueError):
        RandomBrightnessContrast(contrast=1.0)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_is_exact(monkeypatch, k):
    rot = RandomRot90()
    monkeypatch.setattr(rot, "make_params", lambda flat_inputs: {"k": k})
    gen = torch.Generator().manual_seed(k)
    img = tv_tensors.Image(torch.rand((3, 8, 8), generator=gen))
    msk = tv_tensors.Mask(torch.randint(0, 2, (1, 8, 8), generator=gen, dtype=torch.uint8))
    out_img, out_msk = rot(img, msk)
    assert isinstance(out_img, tv_tensors.Image) and isinstance(out_msk, tv_tensors.Mask)
    assert torch.equal(out_img.as_subclass(torch.Tensor), torch.rot90(img, k, dims=(-2, -1)))
    assert torch.equal(out_msk.as_subclass(torch.Tensor), torch.rot90(msk, k, dims=(-2, -1)))


def test_rot90_uses_all_four_rotations():
    rot = RandomRot90()
    img = tv_tensors.Image(torch.arange(16.0).reshape(1, 4, 4))
    torch.manual_seed(0)
    outs = {tuple(rot(img).flatten().tolist()) for _ in range(40)}
    expected = {tuple(torch.rot90(img, k, dims=(-2, -1)).flatten().tolist()) for k in range(4)}
    assert outs == expected


# ---------------------------------------------------------------------------------------------
# EMDataModule
# ---------------------------------------------------------------------------------------------


def _datamodule(root: Path, **kwargs) -> EMDataModule:
    epfl = root / "epfl"
    options = {
        "val_slices": 3,
        "patch_size": 32,
        "batch_size": 2,
        "samples_per_epoch": 8,
        "num_workers": 0,
        "mean": 0.5,
        "std": 0.25,
    }
    options.update(kwargs)
    return EMDataModule(
        train_image=str(epfl / "training.tif"),
        train_mask=str(epfl / "training_groundtruth.tif"),
        test_image=str(epfl / "testing.tif"),
        test_mask=str(epfl / "testing_groundtruth.tif"),
        **options,
    )


def test_datamodule_fit_split_is_last_slices(synthetic_data_dir):
    epfl = synthetic_data_dir / "epfl"
    image = tifffile.imread(epfl / "training.tif")
    mask = tifffile.imread(epfl / "training_groundtruth.tif") > 0
    dm = _datamodule(synthetic_data_dir, val_slices=3)
    dm.setup("fit")
    assert dm.test_set is None  # fit does not load the test volume
    assert np.array_equal(dm.val_set.image, image[-3:])
    assert np.array_equal(dm.val_set.mask, mask[-3:])
    assert np.array_equal(dm.train_set.image, image[:-3])
    assert np.array_equal(dm.train_set.mask, mask[:-3])
    assert len(dm.val_set) == 3
    train_set = dm.train_set
    dm.setup("fit")  # idempotent
    assert dm.train_set is train_set


@pytest.mark.parametrize("context", [0, 1])
def test_datamodule_batches(synthetic_data_dir, context):
    dm = _datamodule(synthetic_data_dir, context=context)
    channels = 2 * context + 1
    assert dm.in_channels == channels
    dm.setup("fit")
    torch.manual_seed(0)
    train = list(dm.train_dataloader())
    assert len(train) == 4  # 8 samples per epoch / batch size 2
    img, msk = train[0]
    assert img.shape == (2, channels, 32, 32) and msk.shape == (2, 1, 32, 32)
    assert img.dtype == msk.dtype == torch.float32
    val = list(dm.val_dataloader())
    assert len(val) == 3
    img, msk = val[-1]
    assert img.shape == (1, channels, 96, 96) and msk.shape == (1, 1, 96, 96)
    raw = tifffile.imread(synthetic_data_dir / "epfl" / "training.tif")[-1]
    expected = (raw.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(img[0, context].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_datamodule_test_stage(synthetic_data_dir):
    epfl = synthetic_data_dir / "epfl"
    dm = _datamodule(synthetic_data_dir)
    dm.setup("test")
    assert dm.train_set is None and dm.val_set is None
    assert np.array_equal(dm.test_set.image, tifffile.imread(epfl / "testing.tif"))
    assert np.array_equal(dm.test_set.mask, tifffile.imread(epfl / "testing_groundtruth.tif") > 0)
    batches = list(dm.test_dataloader())
    assert len(batches) == 8 and batches[0][0].shape == (1, 1, 96, 96)


def test_datamodule_loader_before_setup(synthetic_data_dir):
    with pytest.raises(DataError, match="setup"):
        _datamodule(synthetic_data_dir).train_dataloader()


@pytest.mark.parametrize("val_slices", [8, 9])
def test_datamodule_val_slices_too_many(synthetic_data_dir, val_slices):
    dm = _datamodule(synthetic_data_dir, val_slices=val_slices)
    with pytest.raises(ConfigError, match=f"val_slices={val_slices}"):
        dm.setup("fit")


def test_datamodule_patch_larger_than_slice(synthetic_data_dir):
    dm = _datamodule(synthetic_data_dir, patch_size=128)
    with pytest.raises(ConfigError, match="patch_size=128"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", -1),
        ("batch_size", 0),
        ("patch_size", -32),
        ("val_slices", 0),
        ("val_slices", 1.5),
        ("std", 0.0),
        ("std", "automatic"),
        ("mean", "foo"),
        ("fg_fraction", 1.5),
        ("fg_fraction", -0.1),
        ("context", -1),
        ("num_workers", -1),
        ("batch_size", "four"),
        ("batch_size", 2.5),
        ("patch_size", True),
        ("fg_fraction", "half"),
        ("context", 0.5),
    ],
)
def test_datamodule_rejects_bad_config(synthetic_data_dir, key, value):
    with pytest.raises(ConfigError, match=f"data.{key}"):
        _datamodule(synthetic_data_dir, **{key: value})


def test_datamodule_shape_mismatch_on_disk(tmp_path):
    epfl = tmp_path / "epfl"
    epfl.mkdir()
    image, mask = make_volume(depth=6, size=64)
    _write(epfl / "training.tif", image)
    _write(epfl / "training_groundtruth.tif", mask[:, :, :48])
    _write(epfl / "testing.tif", image)
    _write(epfl / "testing_groundtruth.tif", mask[:5])
    dm = _datamodule(tmp_path, val_slices=2)
    with pytest.raises(DataError, match="training_groundtruth.tif"):
        dm.setup("fit")
    with pytest.raises(DataError, match="testing_groundtruth.tif"):
        dm.setup("test")


# ---------------------------------------------------------------------------------------------
# emseg.data.prepare
# ---------------------------------------------------------------------------------------------


def _source_dir(root: Path) -> Path:
    """A local data copy with two small files and a correct SHA256SUMS."""
    source = root / "source"
    (source / "epfl").mkdir(parents=True)
    (source / "epfl" / "training.tif").write_bytes(b"training volume bytes")
    (source / "README.md").write_text("readme\n")
    lines = [
        f"{hashlib.sha256((source / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("epfl/training.tif", "README.md")
    ]
    (source / "SHA256SUMS").write_text("".join(lines))
    return source


def _snapshot(root: Path) -> dict[str, tuple[bool, bytes, int]]:
    return {
        str(p.relative_to(root)): (
            p.is_symlink(),
            p.read_bytes() if p.is_file() else b"",
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


def test_link_from_creates_symlinks(tmp_path):
    source = _source_dir(tmp_path)
    dest = tmp_path / "dest"
    before = _snapshot(source)
    prepare.link_from(source, dest)
    for name in ("epfl/training.tif", "README.md"):
        link = dest / name
        assert link.is_symlink()
        assert link.resolve() == (source / name).resolve()
        assert link.read_bytes() == (source / name).read_bytes()
    assert not (dest / "SHA256SUMS").exists()
    assert _snapshot(source) == before  # the source is never modified


def test_link_from_is_idempotent(tmp_path):
    source = _source_dir(tmp_path)
    dest = tmp_path / "dest"
    prepare.link_from(source, dest)
    first = _snapshot(dest)
    prepare.link_from(source, dest)
    assert _snapshot(dest) == first


def test_link_from_refuses_to_overwrite_other_file(tmp_path):
    source = _source_dir(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "README.md").write_text("my own notes\n")
    with pytest.raises(DataError, match="README.md"):
        prepare.link_from(source, dest)
    assert (dest / "README.md").read_text() == "my own notes\n"


def test_link_from_checksum_mismatch(tmp_path):
    source = _source_dir(tmp_path)
    (source / "epfl" / "training.tif").write_bytes(b"corrupted bytes")
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as info:
        prepare.link_from(source, dest)
    message = str(info.value)
    assert str(source / "epfl" / "training.tif") in message and "SHA-256" in message
    failed = dest / "epfl" / "training.tif"
    assert not failed.exists() and not failed.is_symlink()
    assert not (dest / "README.md").is_symlink()  # verification happens before any linking


def test_link_from_missing_listed_file(tmp_path):
    source = _source_dir(tmp_path)
    (source / "README.md").unlink()
    with pytest.raises(DataError, match="missing"):
        prepare.link_from(source, tmp_path / "dest")


def test_read_sums_formats(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("abc  plain.tif\n\ndef *binary.tif\n")
    assert prepare.read_sums(sums) == {"plain.tif": "abc", "binary.tif": "def"}
    sums.write_text("abc  plain.tif\nnot-a-valid-line\n")
    with pytest.raises(DataError, match="line 2"):
        prepare.read_sums(sums)


def test_main_exit_codes(tmp_path, capsys):
    source = _source_dir(tmp_path)
    dest = tmp_path / "dest"
    good = (source / "README.md").read_text()
    (source / "README.md").write_text("tampered\n")
    assert prepare.main(["--source", str(source), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "README.md" in err
    assert not (dest / "README.md").exists()

    (source / "README.md").write_text(good)
    assert prepare.main(["--source", str(source), "--dest", str(dest)]) == 0
    assert (dest / "README.md").is_symlink() and (dest / "epfl" / "training.tif").is_symlink()
    assert prepare.main(["--source", str(source), "--dest", str(dest)]) == 0  # re-run is fine

    (source / "SHA256SUMS").write_text("garbage\n")
    assert prepare.main(["--source", str(source), "--dest", str(dest)]) == 2
