"""``data.percentiles``: every volume mapped by its own percentiles, in training and inference.

Two copies of one volume under different linear intensity maps (``x`` and ``0.5 * x + 40``, as
two microscopes might record it) must give the same normalised patches and the same
predictions in percentiles mode, and different ones in the default mode.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from emseg.data.datamodule import EMDataModule
from emseg.data.dataset import RandomPatchDataset
from emseg.data.normalization import (
    Preprocessing,
    check_percentiles,
    map_intensities,
    sample_percentiles,
    sample_statistics,
    to_unit_float,
)
from emseg.errors import ConfigError, DataError
from tests.conftest import CONFIG_DIR, TINY_OVERRIDES, compose_train, make_volume

PERCENTILES = [1, 99.8]


def _copies(root: Path, depth: int = 8, size: int = 96) -> dict[str, str]:
    """``a.tif`` (even uint8 values), ``b.tif = 0.5 * a + 40`` (exact) and ``mask.tif``."""
    root.mkdir(parents=True, exist_ok=True)
    image, mask = make_volume(depth=depth, size=size)
    a = (image // 2 * 2).astype(np.uint8)
    b = (a // 2 + 40).astype(np.uint8)
    paths = {"a": root / "a.tif", "b": root / "b.tif", "mask": root / "mask.tif"}
    for key, volume in (("a", a), ("b", b), ("mask", mask)):
        tifffile.imwrite(paths[key], volume)
    return {key: str(path) for key, path in paths.items()}


def _datamodule(paths: dict[str, str], **kwargs) -> EMDataModule:
    """Both copies as training volumes and as validation volumes, tiny settings."""
    entries = [{"image": paths[k], "labels": paths["mask"], "name": k} for k in ("a", "b")]
    options = {"patch_size": 32, "batch_size": 2, "samples_per_epoch": 8, "num_workers": 0}
    options |= {"mean": "auto", "std": "auto", "seed": 0}
    return EMDataModule(volumes=entries, val_volumes=entries, **{**options, **kwargs})


def _patches(datamodule: EMDataModule, number: int) -> torch.Tensor:
    """Patches 0..5 of training volume ``number`` alone (same seed: the same positions)."""
    volume = datamodule.train_set.volumes[number]
    dataset = RandomPatchDataset(
        patch_size=32,
        length=6,
        mean=datamodule.mean,
        std=datamodule.std,
        seed=0,
        volumes=[volume],
    )
    return torch.stack([dataset[key][0] for key in range(6)])


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [[99, 1], [50, 50], [-1, 99], [1, 100.5], [1], [1, 50, 99], "1,99", [True, 99], [1, math.nan]],
)
def test_bad_percentiles_are_one_config_error(tmp_path, value):
    paths = _copies(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.percentiles must be null or \[low, high\]"):
        _datamodule(paths, percentiles=value)


def test_check_percentiles_accepts_null_lists_and_listconfig():
    assert check_percentiles(None) is None
    assert check_percentiles([1, 99.8]) == (1.0, 99.8)
    assert check_percentiles(OmegaConf.create([0, 100])) == (0.0, 100.0)


def test_custom_and_epfl_configs_default_to_off():
    for name in ("custom", "epfl"):
        assert OmegaConf.load(Path(CONFIG_DIR) / "data" / f"{name}.yaml").percentiles is None


# --- measurement and mapping --------------------------------------------------------------------


def test_percentiles_use_the_statistics_sample():
    """Small volume: numpy's percentiles exactly; large: bounded, seeded, close to numpy's."""
    image, _ = make_volume(depth=8, size=96)
    measured = sample_percentiles(image, (1, 99.8))
    expected = np.percentile(to_unit_float(image), [1, 99.8])
    assert measured.exact and measured.voxels == image.size
    assert (measured.low, measured.high) == pytest.approx(tuple(expected), abs=1e-6)
    rng = np.random.default_rng(1)
    large = rng.normal(120, 25, (100, 256, 256)).clip(0, 255).astype(np.uint8)
    sampled = sample_percentiles(large, (1, 99.8))
    assert not sampled.exact and sampled.voxels <= 2**22 and sampled.slices == 64
    assert sampled == sample_percentiles(large, (1, 99.8))  # seeded
    full = np.percentile(to_unit_float(large), [1, 99.8])
    assert (sampled.low, sampled.high) == pytest.approx(tuple(full), abs=2 / 255)


def test_constant_volume_is_a_data_error():
    with pytest.raises(DataError, match="almost constant"):
        sample_percentiles(np.full((3, 16, 16), 7, np.uint8), (1, 99), name="flat.tif")


def test_mapping_is_clipped_and_undoes_a_linear_map():
    x = np.linspace(0, 1, 11, dtype=np.float32)
    mapped = map_intensities(x, (0.2, 0.7))
    assert mapped.dtype == np.float32 and mapped.min() == 0 and mapped.max() == 1
    assert map_intensities(0.5 * x + 0.1, (0.2, 0.45)) == pytest.approx(mapped, abs=1e-6)


def test_default_preprocessing_is_unchanged():
    image, _ = make_volume(depth=3, size=32)
    pre = Preprocessing(0, 0.548, 0.119)
    expected = (image.astype(np.float32) / np.float32(255) - np.float32(0.548)) / np.float32(0.119)
    assert np.array_equal(pre(image), expected)
    assert pre.for_volume(image) is pre
    assert sample_statistics(image) == sample_statistics(image, intensity_range=None)


def test_unmeasured_percentile_preprocessing_refuses():
    pre = Preprocessing(0, 0.0, 1.0, (1.0, 99.0))
    with pytest.raises(ValueError, match="for_volume"):
        pre(np.zeros((4, 4), np.uint8))


# --- training data ------------------------------------------------------------------------------


def test_linear_copies_give_the_same_patches_only_with_percentiles(tmp_path, caplog):
    paths = _copies(tmp_path)
    with caplog.at_level(logging.INFO, logger="emseg"):
        mapped = _datamodule(paths, percentiles=PERCENTILES)
        mapped.setup("fit")
    assert [v.intensity_range is not None for v in mapped.train_set.volumes] == [True, True]
    for key in ("a", "b"):  # measured once per image, logged with its name
        assert (
            sum(paths[key] in r.getMessage() and "p99.8" in r.getMessage() for r in caplog.records)
            == 1
        )
    assert torch.allclose(_patches(mapped, 0), _patches(mapped, 1), atol=1e-4)
    val_a, val_b = mapped.val_set.datasets
    assert torch.allclose(val_a[3][0], val_b[3][0], atol=1e-4)

    plain = _datamodule(paths)
    plain.setup("fit")
    assert plain.train_set.volumes[0].intensity_range is None
    assert (_patches(plain, 0) - _patches(plain, 1)).abs().max() > 0.5


def test_auto_statistics_are_of_the_mapped_training_slices(tmp_path):
    paths = _copies(tmp_path)
    datamodule = _datamodule(paths, percentiles=PERCENTILES)
    mean, std = datamodule.resolve_normalization()  # lazily, from the files
    ranges = [datamodule.intensity_range(paths[k]) for k in ("a", "b")]
    unit = [to_unit_float(tifffile.imread(paths[k])) for k in ("a", "b")]
    mapped = [map_intensities(u, r).ravel() for u, r in zip(unit, ranges, strict=True)]
    values = np.concatenate(mapped)
    assert mean == pytest.approx(float(values.mean()), abs=1e-5)
    assert std == pytest.approx(float(values.std()), abs=1e-5)


# --- checkpoint, predict.py, export -------------------------------------------------------------


@pytest.fixture(scope="module")
def percentile_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    """``last.ckpt`` of a tiny run with ``data.percentiles=[1, 99.8]``."""
    from emseg.train import run as run_train

    run_dir = tmp_path_factory.mktemp("percentile_run")
    extra = ["logger=none", "trainer.limit_val_batches=1", "data.percentiles=[1,99.8]"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    extra += ["data.mean=auto", "data.std=auto"]
    run_train(compose_train([*TINY_OVERRIDES, *extra], run_dir, synthetic_data_dir))
    return run_dir / "checkpoints" / "last.ckpt"


def _predict_cfg(checkpoint: Path, image: str, output: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    overrides = [f"ckpt_path={checkpoint}", f"input={image}", f"output={output}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[*overrides, "output_dtype=float16"])
    with open_dict(cfg):
        cfg.progress = False
        cfg.paths.output_dir = str(output.parent)
    return cfg


def _predictions(checkpoint: Path, paths: dict[str, str], root: Path) -> list[np.ndarray]:
    """predict.py's float16 probabilities of copies ``a`` and ``b``."""
    from emseg.predict import run as run_predict

    outputs = []
    for key in ("a", "b"):
        output = root / f"{checkpoint.parent.parent.name}_{key}.tif"
        run_predict(_predict_cfg(checkpoint, paths[key], output))
        outputs.append(tifffile.imread(output).astype(np.float32))
    return outputs


def test_checkpoint_records_the_mode(percentile_checkpoint, tiny_checkpoint):
    from emseg.inference import load_checkpoint

    pre = load_checkpoint(percentile_checkpoint).preprocessing
    assert pre.percentiles == (1.0, 99.8) and pre.intensity_range is None
    assert 0.2 < pre.mean < 0.8 and pre.std > 0  # of the mapped, clipped intensities
    assert load_checkpoint(tiny_checkpoint).preprocessing.percentiles is None


def test_predict_maps_each_volume_by_its_percentiles(
    tmp_path, percentile_checkpoint, tiny_checkpoint, caplog
):
    paths = _copies(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="emseg"):
        a, b = _predictions(percentile_checkpoint, paths, tmp_path)
    assert any(paths["b"] in r.getMessage() and "p1 =" in r.getMessage() for r in caplog.records)
    assert np.abs(a - b).max() <= 2e-3  # float16 output
    a, b = _predictions(tiny_checkpoint, paths, tmp_path)  # the default mode
    assert np.abs(a - b).max() > 1e-2


def test_pipeline_measures_the_whole_volume_behind_a_view(tmp_path, percentile_checkpoint):
    """eval.py streams z-range views: the percentiles are those of the whole image."""
    from emseg.inference import VolumePredictor, load_checkpoint
    from emseg.io import open_volume

    paths = _copies(tmp_path)
    checkpoint = load_checkpoint(percentile_checkpoint)
    predictor = VolumePredictor(checkpoint.net, checkpoint.preprocessing)
    with open_volume(paths["a"]) as source:
        view = predictor.preprocessing_for(source.z_range(2, 5))
        whole = predictor.preprocessing_for(source)
        assert view is whole
        assert view.intensity_range == pytest.approx(
            tuple(np.percentile(to_unit_float(tifffile.imread(paths["a"])), PERCENTILES))
        )


def test_export_card_states_the_per_volume_rule(percentile_checkpoint, tiny_checkpoint):
    from emseg.export import model_card
    from emseg.inference import load_checkpoint

    card = model_card(load_checkpoint(percentile_checkpoint), "torchscript", "m.pt", "0", {}, 18)
    assert card["preprocessing"]["percentiles"] == PERCENTILES
    assert "each volume" in card["preprocessing"]["formula"]
    assert "scale_range" in card["preprocessing"]["per_volume"]
    plain = model_card(load_checkpoint(tiny_checkpoint), "torchscript", "m.pt", "0", {}, 18)
    assert "percentiles" not in plain["preprocessing"]


def test_fine_tuning_reuses_the_percentile_mode(percentile_checkpoint):
    from emseg.inference import load_checkpoint
    from emseg.model import reuse_checkpoint_data

    data_cfg = OmegaConf.create({"mean": 0.5, "std": 0.1, "context": 0, "percentiles": None})
    source = load_checkpoint(percentile_checkpoint)
    replaced = reuse_checkpoint_data(data_cfg, source, [])
    assert replaced["percentiles"] == PERCENTILES and list(data_cfg.percentiles) == PERCENTILES
