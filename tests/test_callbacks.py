"""The per-epoch summary line shows validation metrics only in epochs that validated."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from emseg.callbacks import EpochSummary


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


def test_stale_validation_metrics_are_not_shown(caplog):
    metrics = {"train/loss": torch.tensor(0.5), "val/fg_iou": torch.tensor(0.25)}
    trainer = SimpleNamespace(
        callback_metrics=metrics,
        is_global_zero=True,
        sanity_checking=False,
        current_epoch=0,
        global_step=1,
    )
    callback = EpochSummary()
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        _epoch(callback, trainer, validate=True)
        _epoch(callback, trainer, validate=False)
    validated, skipped = (r.getMessage() for r in caplog.records)
    assert "val/fg_iou=0.2500" in validated and "train/loss=0.5000" in validated
    assert "val/" not in skipped and "train/loss=0.5000" in skipped


def test_sanity_check_does_not_count_as_validation(caplog):
    trainer = SimpleNamespace(
        callback_metrics={"val/fg_iou": torch.tensor(0.1)},
        is_global_zero=True,
        sanity_checking=True,
        current_epoch=0,
        global_step=1,
    )
    callback = EpochSummary()
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        _epoch(callback, trainer, validate=True)
    assert "val/" not in caplog.records[-1].getMessage()
