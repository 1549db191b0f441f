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
