"""``data.mean`` / ``data.std: auto``: bounded sampling, training slices only, the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from omegaconf import OmegaConf

from emseg.data.datamodule import EMDataModule
from emseg.data.normalization import MAX_VOXELS, check_statistic, sample_statistics
from emseg.errors import ConfigError, DataError
from tests.conftest import make_volume


def _numpy_stats(image: np.ndarray) -> tuple[float, float]:
    scaled = image.astype(np.float64) / 255
    return float(scaled.mean()), float(scaled.std())


def _write_pair(root: Path, image: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, volume in (("image", image), ("mask", mask)):
        tifffile.imwrite(root / f"{name}.tif", volume)
    for split in ("train", "test"):
        paths[f"{split}_image"] = str(root / "image.tif")
        paths[f"{split}_mask"] = str(root / "mask.tif")
    return paths


def _datamodule(paths: dict[str, str], **kwargs) -> EMDataModule:
    options = {"patch_size": 32, "batch_size": 2, "samples_per_epoch": 4, "num_workers": 0}
    return EMDataModule(**paths, **{**options, **kwargs})


def test_small_volume_is_measured_exactly():
    image, _ = make_volume(depth=8, size=96)
    stats = sample_statistics(image)
    assert stats.exact and stats.voxels == image.size and stats.slices == 8
    mean, std = _numpy_stats(image)
    assert stats.mean == pytest.approx(mean, abs=1e-6)
    assert stats.std == pytest.approx(std, abs=1e-6)


def test_large_volume_is_sampled_within_tolerance():
    """Beyond the budget: at most MAX_VOXELS voxels, within 1e-3 of numpy's statistics."""
    rng = np.random.default_rng(3)
    depth, size = 100, 256  # 6.5 M voxels, 100 slices: both limits apply
    brightness = np.linspace(90, 130, depth)[:, None, None]  # slice-to-slice drift
    image = np.clip(brightness + rng.normal(0, 30, (depth, size, size)), 0, 255).astype(np.uint8)
    stats = sample_statistics(image)
    assert not stats.exact and stats.voxels <= MAX_VOXELS and stats.slices == 64
    mean, std = _numpy_stats(image)
    assert stats.mean == pytest.approx(mean, abs=1e-3)
    assert stats.std == pytest.approx(std, abs=1e-3)
    assert sample_statistics(image) == stats  # seeded: a function of the data


def test_sampling_reads_slices_lazily(tmp_path):
    """A VolumeSource view is read slice by slice and gives what the array gives."""
    from emseg.io import open_volume

    image, _ = make_volume(depth=8, size=96)
    tifffile.imwrite(tmp_path / "v.tif", image)
    with open_volume(tmp_path / "v.tif", "image") as source:
        lazy = sample_statistics(source.z_range(0, 6), max_voxels=5000)
    assert lazy == sample_statistics(image[:6], max_voxels=5000)


def test_auto_uses_the_training_slices_only(tmp_path):
    image, mask = make_volume(depth=10, size=96)
    image[-3:] = 255  # a bright hold-out must not shift the statistics
    dm = _datamodule(_write_pair(tmp_path, image, mask), val_slices=3, mean="auto", std="auto")
    dm.setup("fit")
    mean, std = _numpy_stats(image[:-3])
    assert (dm.mean, dm.std) == pytest.approx((mean, std), abs=1e-6)
    assert dm.train_set.mean == dm.mean and dm.val_set.std == dm.std
    expected = (image[-1].astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(dm.val_set[2][0][0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_auto_mean_keeps_a_given_std(tmp_path, caplog):
    image, mask = make_volume(depth=8, size=96)
    dm = _datamodule(_write_pair(tmp_path, image, mask), val_slices=2, mean="auto", std=0.25)
    with caplog.at_level("INFO", logger="emseg.data.datamodule"):
        assert dm.resolved_settings() == {"mean": pytest.approx(_numpy_stats(image[:6])[0])}
    assert dm.std == 0.25
    [line] = [r.getMessage() for r in caplog.records if "data.mean=auto" in r.getMessage()]
    assert "from 55296 voxels of 6 slices: image.tif slices 0-5" in line
    dm.setup("fit")  # measured once, not again
    assert len([r for r in caplog.records if "=auto" in r.getMessage()]) == 1


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (0.1, 1), (0.25, 4), (0.5, 7)])
def test_val_slices_fraction_of_the_depth(tmp_path, value, expected):
    image, mask = make_volume(depth=14, size=64)
    dm = _datamodule(_write_pair(tmp_path, image, mask), val_slices=value)
    dm.setup("fit")
    assert len(dm.val_set) == expected and len(dm.train_set.image) == 14 - expected
    resolved = {} if isinstance(value, int) else {"val_slices": expected}
    assert dm.resolved_settings() == resolved


def test_val_slices_fraction_leaving_no_training_slice(tmp_path):
    image, mask = make_volume(depth=2, size=64)
    dm = _datamodule(_write_pair(tmp_path, image, mask), val_slices=0.9)
    with pytest.raises(ConfigError, match=r"data.val_slices=0.9 leaves no training slices"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("val_slices", 1.5),
        ("val_slices", 1.0),
        ("val_slices", -0.2),
        ("mean", "foo"),
        ("std", "foo"),
        ("mean", float("nan")),
        ("std", -1.0),
        ("mean", True),
    ],
)
def test_bad_values_name_the_key(tmp_path, key, value):
    image, mask = make_volume(depth=4, size=64)
    with pytest.raises(ConfigError, match=f"^data.{key} must be") as err:
        _datamodule(_write_pair(tmp_path, image, mask), **{key: value})
    assert "\n" not in str(err.value)


def test_check_statistic_accepts_numbers_and_auto():
    assert check_statistic("data.mean", 0) == 0.0
    assert check_statistic("data.std", 0.119) == 0.119
    assert check_statistic("data.std", "auto") is None


def test_auto_std_of_a_constant_volume(tmp_path):
    image = np.full((4, 64, 64), 77, np.uint8)
    mask = np.zeros_like(image)
    dm = _datamodule(_write_pair(tmp_path, image, mask), val_slices=1, std="auto")
    with pytest.raises(
        DataError, match=r"^data.std=auto: the training slices have constant intensity .*image.tif"
    ):
        dm.setup("fit")


def test_checkpoint_trained_with_auto_holds_numbers(tiny_cfg, synthetic_data_dir):
    """The run config, config.yaml and the checkpoint hold the measured numbers, and
    load_checkpoint (what eval.py, predict.py and export.py use) gives them back."""
    from emseg.inference.checkpoint import load_checkpoint
    from emseg.train import run

    extra = ["logger=none", "test_after_fit=false", "trainer.limit_val_batches=1"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    cfg = tiny_cfg("data.mean=auto", "data.std=auto", "data.val_slices=0.25", *extra)
    run(cfg)
    image = tifffile.imread(synthetic_data_dir / "epfl" / "training.tif")
    mean, std = _numpy_stats(image[:6])  # 0.25 of 8 slices: 2 held out
    run_dir = Path(cfg.paths.output_dir)
    saved = OmegaConf.load(run_dir / "config.yaml").data
    assert (saved.mean, saved.std, saved.val_slices) == (pytest.approx(mean), pytest.approx(std), 2)
    raw = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    data = raw["emseg_config"]["data"]
    assert isinstance(data["mean"], float) and isinstance(data["std"], float)
    assert data["val_slices"] == 2
    pre = load_checkpoint(run_dir / "checkpoints" / "last.ckpt").preprocessing
    assert (pre.mean, pre.std) == (pytest.approx(mean, abs=1e-6), pytest.approx(std, abs=1e-6))
