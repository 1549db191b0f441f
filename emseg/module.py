"""LightningModule: network + loss + metrics; optimizer and scheduler arrive as Hydra partials."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from emseg.errors import EmsegError
from emseg.inference.sliding_window import model_stride, pad_to_multiple
from emseg.metrics import segmentation_metrics
from emseg.optim import param_groups
from emseg.schedulers import budget_progress

__all__ = ["MONITOR", "SegmentationModule"]

MONITOR = "val/fg_iou"
"""The metric that selects the best checkpoint and drives plateau schedulers (code's default;
configs name it once, as ``module.monitor``, and interpolate it elsewhere)."""

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class SegmentationModule(L.LightningModule):
    """Binary segmentation of mitochondria.

    Args:
        net: maps ``(N, C, Y, X)`` images to ``(N, 1, Y, X)`` logits.
        loss: ``loss(logits, target)`` with float target in {0, 1}.
        optimizer: partial optimizer, called with the parameter groups.
        scheduler: partial LR scheduler called with the optimizer, or ``None``.
        l2_last_two: weight decay of the final two conv layers only (a parameter group of its
            own, see :func:`emseg.optim.param_groups`); 0 disables it.
        channels_last: run the network in channels_last memory layout.
        monitor: logged metric that plateau schedulers follow (``mode: max`` in their config).
        run_config: the resolved run configuration, stored in every checkpoint so evaluation
            and prediction rebuild the model and the normalisation from the checkpoint alone.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        l2_last_two: float = 0.0,
        channels_last: bool = False,
        monitor: str = MONITOR,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            logger=False, ignore=["net", "loss", "optimizer", "scheduler", "run_config"]
        )
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = run_config
        metrics = segmentation_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, Y, X)`` for images ``(N, C, Y, X)`` of any size (padded internally)."""
        padded, (height, width) = pad_to_multiple(x, model_stride(self.net))
        if self.hparams.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        return self.net(padded)[..., :height, :width]

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict:
        image, target = batch
        logits = self(image).float()
        loss = self.loss(logits, target)
        if stage == "train" and not torch.isfinite(loss):
            raise EmsegError(
                f"training loss became {loss.item()} at step {self.global_step}; "
                "lower the learning rate or check the data (the last checkpoint is kept)"
            )
        probs = torch.sigmoid(logits.detach())
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, target.long())
        # sync_dist: under DDP the epoch loss is the batch-weighted mean over all processes
        # (one scalar all-reduce per step in training, negligible next to the gradients').
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=image.shape[0],
            sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return {"loss": loss, "probs": probs}

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")["loss"]

    @override
    def validation_step(self, batch, batch_idx: int) -> dict:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> dict:
        return self._shared_step(batch, "test")

    @override
    def on_train_start(self) -> None:
        # The sanity check must not leak into the first epoch's validation metrics.
        self.val_metrics.reset()

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=param_groups(self.net, self.hparams.l2_last_two))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        if hasattr(scheduler, "bind"):  # a wall-clock schedule: the trainer's Timer is its clock
            scheduler.bind(budget_progress(self.trainer))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.monitor,
                # per optimizer step for schedules that say so (wall clock), else per epoch
                "interval": getattr(scheduler, "interval", "epoch"),
            },
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["emseg_config"] = self.run_config
