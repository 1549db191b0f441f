"""The per-epoch summary line shows validation metrics only in epochs that validated; the
validation images use the report figures' error overlay."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from emseg.callbacks import EpochSummary, ValidationImageLogger
from emseg.report.figures import error_rgb


class _Module:
    def log(self, *args, **kwargs) -> None:
        pass


def _epoch(callback: EpochSummary, trainer: SimpleNamespace, validate: bool) -> None:
    module = _Module()
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_start(trainer, module, None, 0)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    if validate:
        callback.on_validation_epoch_end(trainer, module)
    callback.on_train_epoch_end(trainer, module)


def _trainer(metrics: dict[str, float], sanity_checking: bool) -> SimpleNamespace:
    return SimpleNamespace(
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        is_global_zero=True,
        sanity_checking=sanity_checking,
        current_epoch=0,
        global_step=1,
    )


def test_stale_validation_metrics_are_not_shown(caplog):
    trainer = _trainer({"train/loss": 0.5, "val/fg_iou": 0.25}, sanity_checking=False)
    callback = EpochSummary()
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        _epoch(callback, trainer, validate=True)
        _epoch(callback, trainer, validate=False)
    validated, skipped = (r.getMessage() for r in caplog.records)
    assert "val/fg_iou=0.2500" in validated and "train/loss=0.5000" in validated
    assert "val/" not in skipped and "train/loss=0.5000" in skipped


def test_sanity_check_does_not_count_as_validation(caplog):
    trainer = _trainer({"val/fg_iou": 0.1}, sanity_checking=True)
    callback = EpochSummary()
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        _epoch(callback, trainer, validate=True)
    assert "val/" not in caplog.records[-1].getMessage()


def test_validation_images_are_the_report_overlay():
    callback = ValidationImageLogger(num_images=1, downsample=1)
    trainer = SimpleNamespace(sanity_checking=False, num_val_batches=[1])
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 4, 4, generator=generator)
    target = (torch.rand(1, 1, 4, 4, generator=generator) > 0.5).float()
    probs = torch.rand(1, 1, 4, 4, generator=generator)
    callback.on_validation_batch_end(trainer, None, {"probs": probs}, (image, target), 0)
    (panel,) = callback._panels
    expected = error_rgb(image[0, 1].numpy(), probs[0, 0].numpy() > 0.5, target[0, 0].numpy() > 0.5)
    assert torch.equal(panel, torch.from_numpy(expected).permute(2, 0, 1))
