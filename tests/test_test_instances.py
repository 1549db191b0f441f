"""InstanceMetricsAtTest: instance metrics of the test volume logged at test time."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import tifffile
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from emseg.callbacks import InstanceMetricsAtTest
from emseg.data.dataset import SliceDataset
from emseg.errors import ConfigError
from emseg.train import run
from tests.conftest import make_volume


class _Oracle(L.LightningModule):
    """Predicts ``probs = scale * target`` (1: the truth itself, 0: nothing)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def test_step(self, batch, batch_idx):
        return {"probs": (batch[1] == 1).float() * self.scale}


def _test(scale: float, batch_size: int = 3) -> tuple[dict, int]:
    image, mask = make_volume(depth=7, size=64, seed=3)
    mask = mask // 255  # the targets: {0, 1}
    loader = DataLoader(SliceDataset(image, mask), batch_size=batch_size, shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[InstanceMetricsAtTest()],
    )
    results = trainer.test(_Oracle(scale), dataloaders=loader, verbose=False)[0]
    n_true = ndimage.label(mask == 1)[1]
    return results, n_true


def test_the_truth_scores_one_and_counts_every_object():
    results, n_true = _test(1.0)
    assert n_true >= 2
    assert results["test/instance_n_true"] == n_true == results["test/instance_n_pred"]
    for key in ("ap", "ap50", "f1", "precision", "recall", "mean_matched_iou"):
        assert results[f"test/instance_{key}"] == pytest.approx(1.0), key
    assert results["test/instance_splits"] == results["test/instance_merges"] == 0


def test_an_empty_prediction_finds_no_object():
    results, n_true = _test(0.0, batch_size=2)
    assert results["test/instance_n_pred"] == 0 and results["test/instance_n_true"] == n_true
    assert results["test/instance_f1"] == 0.0 and results["test/instance_recall"] == 0.0


def test_a_bad_threshold_is_refused():
    with pytest.raises(ConfigError, match="test_instances.threshold"):
        InstanceMetricsAtTest(threshold=1.5)


def test_train_py_logs_instance_metrics_to_tensorboard_and_metrics_json(tiny_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg()
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("test/instance_ap", "test/instance_f1", "test/instance_n_true"):
        assert key in metrics and key in summary
    test_mask = tifffile.imread(str(cfg.data.test_mask))
    assert summary["test/instance_n_true"] == ndimage.label(test_mask > 0)[1]
    tags = set()
    for events in (out / "tb").glob("events.out.tfevents.*"):  # trainer.test writes its own
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {"test/fg_iou", "test/instance_ap", "test/instance_f1"} <= tags
