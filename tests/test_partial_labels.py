"""Own data beyond one fully labelled volume: label conventions, unlabelled voxels, labels
crops at an offset, ROIs, several training volumes, explicit validation volumes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from emseg.data.datamodule import EMDataModule
from emseg.data.dataset import RandomPatchDataset
from emseg.data.labels import IGNORE, to_targets
from emseg.data.volumes import TrainingVolume
from emseg.errors import ConfigError, DataError
from emseg.metrics import ThresholdSweep, segmentation_metrics
from emseg.train import run
from emseg.volume_scores import VolumeScores
from tests.conftest import CONFIG_DIR, TINY_OVERRIDES, compose_train, make_volume

# ----------------------------------------------------------------------------------------------
# Label conventions


@pytest.mark.parametrize(
    ("labels", "convention"),
    [
        (np.array([0, 1, 1, 0], np.uint8), "auto"),
        (np.array([0, 255, 255, 0], np.uint8), "auto"),
        (np.array([False, True, True, False]), "auto"),
        (np.array([0, 7, 300, 0], np.uint16), "auto"),  # instance ids
        (np.array([0, 3, 9, 0], np.uint8), "instances"),
        (np.array([0, 1, 1, 0], np.int64), "binary"),
    ],
)
def test_label_conventions_give_foreground_targets(labels, convention):
    assert to_targets(labels, "l.tif", convention).tolist() == [0, 1, 1, 0]


def test_unlabelled_value_becomes_ignore():
    labels = np.array([0, 1, 255, 1, 255], np.uint8)
    assert to_targets(labels, "l.tif", unlabelled=255).tolist() == [0, 1, IGNORE, 1, IGNORE]
    # {0, 255} masks mark unannotated voxels with another value
    labels = np.array([0, 255, 2, 0], np.uint8)
    assert to_targets(labels, "l.tif", unlabelled=2).tolist() == [0, 1, IGNORE, 0]


@pytest.mark.parametrize(
    ("labels", "convention", "unlabelled", "match"),
    [
        (np.array([0, 1, 2], np.uint8), "auto", None, r"l.tif: uint8 labels .*data.labels"),
        (
            np.array([0, 1, 7], np.uint8),
            "binary",
            None,
            r"l.tif: a binary mask .*found \[0, 1, 7\]",
        ),
        (np.array([0, 1, 2], np.uint8), "binary", 255, r"found \[0, 1, 2\]"),
        (np.array([0.0, 1.0], np.float32), "auto", None, r"l.tif: labels must be bool or integers"),
        (np.array([0, -3], np.int32), "instances", None, r"instance labels must be >= 0"),
    ],
)
def test_labels_outside_their_convention_are_refused(labels, convention, unlabelled, match):
    with pytest.raises(DataError, match=match):
        to_targets(labels, "l.tif", convention, unlabelled)


def test_bad_label_settings_are_config_errors():
    with pytest.raises(ConfigError, match="data.labels must be one of"):
        to_targets(np.zeros(3, np.uint8), "l.tif", "semantic")
    with pytest.raises(ConfigError, match="data.unlabelled must be"):
        to_targets(np.zeros(3, np.uint8), "l.tif", "auto", -1)


# ----------------------------------------------------------------------------------------------
# Losses and metrics leave unlabelled pixels out


def _loss_configs() -> list[str]:
    from pathlib import Path

    return sorted(p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml"))


@pytest.mark.parametrize("name", _loss_configs())
def test_every_loss_ignores_unlabelled_pixels(name):
    loss = instantiate(OmegaConf.load(f"{CONFIG_DIR}/loss/{name}.yaml"))
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, generator=generator) > 0.6).float()
    target[:, :, :, :6] = IGNORE
    logits = torch.randn(2, 1, 16, 16, generator=generator, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.all(logits.grad[..., :6] == 0)  # no gradient where there is no label
    assert torch.any(logits.grad[..., 6:] != 0)
    changed = logits.detach().clone()
    changed[..., :6] = torch.randn(2, 1, 16, 6, generator=generator) * 10
    assert torch.allclose(loss(changed, target), value, rtol=1e-6, atol=1e-7)


def test_masked_bce_equals_torch_bce_when_everything_is_labelled():
    from emseg.losses import MaskedBCEWithLogitsLoss

    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    expected = torch.nn.BCEWithLogitsLoss()(logits, target)
    assert torch.equal(MaskedBCEWithLogitsLoss()(logits, target), expected)
    only = torch.nn.BCEWithLogitsLoss()(logits[..., :4], target[..., :4])
    target[..., 4:] = IGNORE
    assert torch.allclose(MaskedBCEWithLogitsLoss()(logits, target), only)


def test_metrics_leave_unlabelled_pixels_out():
    probs = torch.tensor([0.9, 0.9, 0.1, 0.9, 0.1])
    target = torch.tensor([1, 1, 0, IGNORE, IGNORE])
    metrics = segmentation_metrics()
    metrics.update(probs, target)
    assert float(metrics.compute()["fg_iou"]) == 1.0
    sweep = ThresholdSweep()
    sweep.update(probs, target)
    thresholds, ious = sweep.compute()
    assert float(ious[int(torch.argmin((thresholds - 0.5).abs()))]) == 1.0
    assert int(sweep.fg_hist.sum()) == 2 and int(sweep.bg_hist.sum()) == 1
    scores = VolumeScores(edge_band=0)
    scores.update_prediction((probs > 0.5).numpy().reshape(1, 5), target.numpy().reshape(1, 5))
    assert scores.counts()["all"] == {"tp": 2, "fp": 0, "tn": 1, "fn": 0}


# ----------------------------------------------------------------------------------------------
# Patch sampling only where labels exist


def test_patches_are_centred_on_labelled_voxels():
    image, mask = make_volume(depth=10, size=96)
    targets = np.full(mask.shape, IGNORE, np.uint8)
    targets[[2, 7]] = mask[[2, 7]] > 0  # two labelled slices of ten
    ds = RandomPatchDataset(image, targets, patch_size=32, length=200, fg_fraction=0.3, seed=3)
    for key in range(200):
        _, target = ds[key]
        assert target[0, 16, 16] != IGNORE  # the centre pixel is labelled
    # every labelled slice is drawn from, no unlabelled one
    slices = {ds._corner()[1] for _ in range(200)}
    assert slices == {2, 7}


def test_a_labels_crop_trains_with_image_context_around_it():
    """Labels of a 20 x 20 crop, patches of 32: the patch reaches into the image around the
    crop, and pixels outside the crop have no label."""
    image, mask = make_volume(depth=4, size=96)
    crop = (mask[:, 40:60, 30:50] > 0).astype(np.uint8)
    volume = TrainingVolume(image, crop, 40, 30, "v")
    ds = RandomPatchDataset(volumes=[volume], patch_size=32, length=50, fg_fraction=0.5, seed=1)
    for key in range(50):
        img, target = ds[key]
        labelled = target[0] != IGNORE
        assert 0 < int(labelled.sum()) <= 400 and not bool(labelled.all())


def test_uniform_labelled_draw_reaches_every_labelled_voxel():
    targets = np.full((1, 16, 16), IGNORE, np.uint8)
    targets[0, 3, 5] = 0
    targets[0, 12, 14] = 1
    targets[0, 9, 0] = 0
    ds = RandomPatchDataset(np.zeros((1, 16, 16), np.uint8), targets, 4, 1, fg_fraction=0.0)
    torch.manual_seed(0)
    drawn = {ds.sampling[0].labelled_voxel(targets) for _ in range(300)}
    assert drawn == {(0, 3, 5), (0, 12, 14), (0, 9, 0)}


# ----------------------------------------------------------------------------------------------
# Volume entries, crops, ROIs: bad input


def _tif(path, array):
    tifffile.imwrite(path, array)
    return str(path)


def _dm(**kwargs) -> EMDataModule:
    defaults = {"patch_size": 32, "batch_size": 2, "samples_per_epoch": 4, "num_workers": 0}
    return EMDataModule(**{**defaults, **kwargs})


@pytest.fixture
def volume_files(tmp_path):
    image, mask = make_volume(depth=8, size=96)
    return {
        "image": _tif(tmp_path / "image.tif", image),
        "labels": _tif(tmp_path / "labels.tif", mask),
        "crop": _tif(tmp_path / "crop.tif", mask[2:6, 10:60, 20:70]),
        "empty": _tif(tmp_path / "empty.tif", np.full_like(mask, 2)),
        "arrays": (image, mask),
        "dir": tmp_path,
    }


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"labels_at": "crop", "offset": [6, 10, 20]}, r"crop.tif.*outside the image .*image.tif"),
        ({"labels_at": "crop"}, r"crop.tif have shape \(4, 50, 50\); they must match .*offset"),
        ({"labels_at": "labels", "roi": [[0, 9], None, None]}, r"roi z range \[0, 9\) .*outside"),
        (
            {"labels_at": "crop", "offset": [2, 10, 20], "roi": [[6, 8], None, None]},
            r"does not overlap its labels",
        ),
        ({"labels_at": "empty", "unlabelled": 2}, r"empty.tif: every voxel .* is unlabelled"),
    ],
)
def test_bad_volume_entries_are_one_clear_error(volume_files, entry, match):
    entry = dict(entry)
    unlabelled = entry.pop("unlabelled", None)
    entry["labels"] = volume_files[entry.pop("labels_at")]
    entry["image"] = volume_files["image"]
    dm = _dm(volumes=[entry], val_slices=1, unlabelled=unlabelled, mean=0.5, std=0.2)
    with pytest.raises(DataError, match=match):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volumes": []}, r"data.volumes is empty"),
        ({"volumes": "a.tif"}, r"data.volumes must be a list"),
        ({"volumes": [{"image": "a.tif"}]}, r"data.volumes\[0\].labels must be a volume string"),
        ({"volumes": [{"image": "a", "labels": "b", "offst": [0, 0, 0]}]}, r"unknown keys"),
        ({"volumes": [{"image": "a", "labels": "b", "offset": [0, 0]}]}, r"offset must be three"),
        ({"train_image": "a.tif", "train_mask": "b.tif", "volumes": []}, r"not both"),
        ({"train_image": "a.tif"}, r"data.train_mask is not set"),
        ({"train_image": "a", "train_mask": "b", "voxel_size": [5, 5]}, r"data.voxel_size"),
    ],
)
def test_bad_volume_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _dm(**kwargs)


def test_several_volumes_crops_and_per_volume_hold_out(volume_files, tmp_path):
    image, mask = volume_files["arrays"]
    with h5py.File(tmp_path / "second.h5", "w") as file:
        file["raw"] = image[:, ::-1]
        file["crop"] = mask[:, ::-1][1:7, 0:64, 0:64]
    dm = _dm(
        volumes=[
            {"image": volume_files["image"], "labels": volume_files["labels"]},
            {
                "image": f"{tmp_path}/second.h5:raw",
                "labels": f"{tmp_path}/second.h5:crop",
                "offset": [1, 0, 0],
                "name": "second",
            },
        ],
        val_slices=0.25,
        mean="auto",
        std="auto",
    )
    dm.setup("fit")
    train, val = dm.plan()
    assert [box.start[0] for _, box in val] == [6, 5] and [box.stop[0] for _, box in train] == [
        6,
        5,
    ]
    assert len(dm.val_set) == 2 + 2
    assert [v.name for v in dm.train_set.volumes] == ["image.tif", "second"]
    pooled = np.concatenate([image[:6].ravel(), image[1:5].ravel()]) / 255.0
    assert dm.mean == pytest.approx(pooled.mean(), abs=1e-4)
    assert dm.std == pytest.approx(pooled.std(), abs=1e-4)
    patch, target = dm.train_set[0]
    assert patch.shape == (1, 32, 32) and target.shape == (1, 32, 32)


def test_large_images_are_read_from_their_store(volume_files):
    """Above ``in_memory_mb`` the image is read patch by patch: the same patches as in memory."""
    from emseg.data.volumes import LazyImage

    def setup(**kwargs) -> EMDataModule:
        dm = _dm(
            train_image=volume_files["image"],
            train_mask=volume_files["labels"],
            val_slices=2,
            mean=0.5,
            std=0.2,
            seed=5,
            **kwargs,
        )
        dm.setup("fit")
        return dm

    eager, lazy = setup(), setup(in_memory_mb=0)
    assert isinstance(lazy.train_set.image, LazyImage)
    assert isinstance(eager.train_set.image, np.ndarray)
    for key in range(4):
        pairs = zip(eager.train_set[key], lazy.train_set[key], strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)


# ----------------------------------------------------------------------------------------------
# Through train.py


def _train(tmp_path, data_dir, name, data: dict, *extra: str):
    cfg = compose_train(
        [*TINY_OVERRIDES, "data=custom", "logger=none", *extra], tmp_path / name, data_dir
    )
    with open_dict(cfg):
        for key, value in data.items():
            cfg.data[key] = value
    run(cfg)
    ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt


def test_unlabelled_content_changes_nothing_in_training(tmp_path, synthetic_data_dir):
    """Labels on slices 2 and 5 only; the image of every slice more than ``context`` away from
    them replaced by noise, the labels there by other values under the unlabelled mark: the
    trained weights are identical (the unlabelled region is never read)."""
    image, mask = make_volume(depth=10, size=96, seed=4)
    labels = np.full(mask.shape, 7, np.uint8)
    labels[[2, 5]] = mask[[2, 5]] // 255
    val_image, val_mask = make_volume(depth=2, size=96, seed=5)
    val = [
        {
            "image": _tif(tmp_path / "val.tif", val_image),
            "labels": _tif(tmp_path / "val_labels.tif", val_mask),
        }
    ]
    noisy = image.copy()
    far = [z for z in range(10) if min(abs(z - 2), abs(z - 5)) > 1]
    noisy[far] = np.random.default_rng(0).integers(0, 256, noisy[far].shape, dtype=np.uint8)
    states = []
    for name, img in (("clean", image), ("noisy", noisy)):
        data = {
            "train_image": _tif(tmp_path / f"{name}.tif", img),
            "train_mask": _tif(tmp_path / f"{name}_labels.tif", labels),
            "unlabelled": 7,
            "val_volumes": val,
            "mean": 0.45,
            "std": 0.2,
            "context": 1,
        }
        states.append(_train(tmp_path, synthetic_data_dir, name, data)["state_dict"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # and the unlabelled slices do matter once they are labelled: the test can fail
    data = {
        **data,
        "train_mask": _tif(tmp_path / "all_labels.tif", mask),
        "unlabelled": None,
        "train_image": _tif(tmp_path / "clean2.tif", image),
    }
    other = _train(tmp_path, synthetic_data_dir, "labelled", data)["state_dict"]
    assert any(not torch.equal(states[0][k], other[k]) for k in other)


def test_eval_split_val_scores_every_validation_volume(tmp_path, synthetic_data_dir):
    from emseg.evaluate import run as evaluate
    from tests.test_eval_predict import compose_cfg

    image, mask = make_volume(depth=8, size=96, seed=2)
    data = {
        "train_image": None,
        "train_mask": None,
        "volumes": [
            {
                "image": str(synthetic_data_dir / "epfl" / "training.tif"),
                "labels": str(synthetic_data_dir / "epfl" / "training_groundtruth.tif"),
            },
            {
                "image": _tif(tmp_path / "b.tif", image),
                "labels": _tif(tmp_path / "b_crop.tif", mask[:, 8:72, 16:80]),
                "offset": [0, 8, 16],
            },
        ],
        "val_slices": 2,
    }
    _train(tmp_path, synthetic_data_dir, "run", data)
    cfg = compose_cfg("eval", [f"ckpt_path={tmp_path / 'run'}", "split=val"], tmp_path / "eval")
    metrics = evaluate(cfg)
    import json

    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["slices"] == 4 and len(summary["volumes"]) == 2
    pixels = sum(summary["counts"]["all"].values())
    assert pixels == 2 * 96 * 96 + 2 * 64 * 64
    assert 0.0 <= metrics["fg_iou"] <= 1.0


@pytest.mark.parametrize("name", ["custom", "epfl"])
def test_data_configs_name_every_datamodule_argument(name):
    """The template explains every EMDataModule argument (and epfl.yaml lists them)."""
    import inspect

    params = set(inspect.signature(EMDataModule.__init__).parameters) - {"self"}
    keys = set(OmegaConf.load(f"{CONFIG_DIR}/data/{name}.yaml")) - {"_target_"}
    assert params == keys
