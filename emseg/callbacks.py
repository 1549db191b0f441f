"""Lightning callbacks specific to segmentation."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid
from typing_extensions import override

from emseg.errors import ConfigError
from emseg.report.figures import error_rgb

__all__ = ["EpochSummary", "StepProgressLog", "InstanceMetricsAtTest", "ValidationImageLogger"]

log = logging.getLogger(__name__)


class ValidationImageLogger(L.Callback):
    """Log a few validation slices with error overlays (:func:`emseg.report.figures.error_rgb`)
    to TensorBoard after each validation.

    Args:
        num_images: slices to log, spread evenly over the validation batches.
        downsample: integer factor to shrink the images by (keeps event files small).
    """

    def __init__(self, num_images: int = 3, downsample: int = 2) -> None:
        self.num_images = num_images
        self.downsample = downsample
        self._panels: list[torch.Tensor] = []

    def _wanted(self, trainer: L.Trainer) -> set[int]:
        total = trainer.num_val_batches[0] if trainer.num_val_batches else 0
        if total <= 0:
            return set()
        return {
            round(i * (total - 1) / max(self.num_images - 1, 1)) for i in range(self.num_images)
        }

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or batch_idx not in self._wanted(trainer):
            return
        image, target = batch
        centre = image.shape[1] // 2
        s = self.downsample
        rgb = error_rgb(
            image[0, centre, ::s, ::s].float().cpu().numpy(),
            outputs["probs"][0, 0, ::s, ::s].float().cpu().numpy() > 0.5,
            target[0, 0, ::s, ::s].cpu().numpy() > 0.5,
        )
        self._panels.append(torch.from_numpy(rgb).permute(2, 0, 1))

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        panels, self._panels = self._panels, []
        if not panels or trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                grid = make_grid(torch.stack(panels), nrow=len(panels), padding=4, pad_value=1.0)
                logger.experiment.add_image("val/examples", grid, trainer.global_step)


class EpochSummary(L.Callback):
    """One log line per epoch (epoch, step, time, median seconds per training step, metrics),
    readable in nohup/SLURM logs where the live progress bar is not rendered. The median step
    time is also logged as ``perf/step_seconds``."""

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._batch_start = 0.0
        self._step_seconds: list[float] = []
        self._validated = False

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._step_seconds = []
        self._validated = False

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # With check_val_every_n_epoch > 1 the val/* values of other epochs are stale.
        self._validated = self._validated or not trainer.sanity_checking

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._step_seconds.append(time.perf_counter() - self._batch_start)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._step_seconds:
            return
        step = statistics.median(self._step_seconds)
        pl_module.log("perf/step_seconds", step, on_epoch=True, sync_dist=True)
        if not trainer.is_global_zero:
            return
        shown = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if v.numel() == 1
            and not k.endswith("_step")
            and (self._validated or not k.startswith("val/"))
        }
        text = " ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))
        log.info(
            "epoch %d step %d (%.0f s, %.3f s/step): %s",
            trainer.current_epoch,
            trainer.global_step,
            time.perf_counter() - self._epoch_start,
            step,
            text,
        )


def _duration(seconds: float) -> str:
    """``1h02m`` / ``3m05s`` / ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _time_left(trainer: L.Trainer) -> list[float]:
    """Seconds left of ``trainer.max_time`` (its Timer), if set: a wall-clock run
    (``scheduler=wallclock_cosine``) ends there, long before its nominal step count."""
    left = (c.time_remaining("train") for c in trainer.callbacks if isinstance(c, Timer))
    return [max(float(s), 0.0) for s in left if s is not None]


class StepProgressLog(L.Callback):
    """A log line every ``every_n_steps`` training steps: step / total, epoch, loss, s/step, ETA.

    s/step is the wall time since training started divided by the steps since then
    (validation included), so the ETA is that of the whole run: the remaining steps at that
    pace, or what is left of ``trainer.max_time`` if that ends the run first.

    The live progress bar draws nothing when the output is not a terminal (``nohup``, SLURM,
    CI logs); this line is what such a log shows between epochs. By default it is written only
    then (``only_without_terminal``), so an interactive run keeps its bar uncluttered.

    Args:
        every_n_steps: steps between two lines.
        only_without_terminal: skip the lines when stderr is a terminal.
    """

    def __init__(self, every_n_steps: int = 50, only_without_terminal: bool = True) -> None:
        if int(every_n_steps) < 1:
            raise ConfigError(
                f"callbacks.step_progress.every_n_steps must be >= 1, got {every_n_steps}"
            )
        self.every_n_steps = int(every_n_steps)
        self.only_without_terminal = bool(only_without_terminal)
        self._enabled = True
        self._start = 0.0
        self._start_step = 0

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enabled = not (self.only_without_terminal and sys.stderr.isatty())
        self._start, self._start_step = time.perf_counter(), trainer.global_step

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or not trainer.is_global_zero or step % self.every_n_steps:
            return
        done = step - self._start_step
        per_step = (time.perf_counter() - self._start) / max(done, 1)
        total = trainer.estimated_stepping_batches
        left = [per_step * (total - step)] if total != float("inf") else []
        left += _time_left(trainer)
        eta = f", ETA {_duration(min(left))}" if left else ""
        loss = trainer.callback_metrics.get("train/loss_step")
        shown = f", loss {float(loss):.4f}" if loss is not None else ""
        log.info(
            "step %d/%s (epoch %d)%s, %.3f s/step%s",
            step,
            total if total != float("inf") else "?",
            trainer.current_epoch,
            shown,
            per_step,
            eta,
        )


INSTANCE_LOG_KEYS = ("ap", "ap50", "ap75", "f1", "precision", "recall", "mean_matched_iou")
"""Instance metrics that :class:`InstanceMetricsAtTest` logs as ``test/instance_<key>``, with the
counts ``n_pred``, ``n_true``, ``splits`` and ``merges``."""
INSTANCE_COUNT_KEYS = ("n_pred", "n_true", "splits", "merges")


class InstanceMetricsAtTest(L.Callback):
    """Instance metrics of the test volume at test time (``trainer.test``), logged beside the
    pixel metrics as ``test/instance_ap``, ``test/instance_f1``, ... (TensorBoard, the HParams
    tab, and train.py's metrics.json).

    The test loader yields whole slices in z order (:class:`~emseg.data.dataset.SliceDataset`);
    their probabilities are kept, stacked into the ``(Z, Y, X)`` volume at the end of the test
    epoch, thresholded, split into objects by ``settings`` and matched to the 3D connected
    components of the labels (:func:`emseg.objects.run.score_instances`, the function of
    eval.py ``instances=true``, which stays the metric of record with overlapping windows).

    Args:
        settings: how the mask becomes objects (conf/objects); ``None``: connected components.
        threshold: probability above which a voxel is foreground.
        enabled: false turns the callback off (``callbacks.test_instances.enabled=false``).
    """

    def __init__(self, settings: Any = None, threshold: float = 0.5, enabled: bool = True) -> None:
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(
                f"callbacks.test_instances.threshold must lie in (0, 1), got {threshold}"
            )
        self.settings, self.threshold, self.enabled = settings, float(threshold), bool(enabled)
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probs, self._targets = [], []

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled or trainer.world_size > 1:
            return
        # (N, 1, Y, X) per batch; kept as float16 / uint8 on the CPU (a 165 x 768 x 1024 test
        # volume: 260 MB + 130 MB).
        self._probs.append(outputs["probs"][:, 0].to("cpu", torch.float16))
        self._targets.append(batch[1][:, 0].to("cpu", torch.uint8))

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        if trainer.world_size > 1:
            # Each process holds an interleaved share of the slices; the objects need the whole
            # volume in one place.
            log.warning(
                "test instance metrics are not computed under DDP (%d processes); "
                "run eval.py instances=true on the best checkpoint",
                trainer.world_size,
            )
            return
        if not self._probs:
            return
        from emseg.objects.run import log_instance_metrics, score_instances

        probability = torch.cat(self._probs).float().numpy()
        targets = torch.cat(self._targets).numpy()
        self._probs, self._targets = [], []
        settings = self.settings
        if settings is None:
            from emseg.objects import InstanceSettings

            settings = InstanceSettings()
        metrics = score_instances(probability, targets, self.threshold, settings)
        log_instance_metrics(metrics)
        for key in INSTANCE_LOG_KEYS + INSTANCE_COUNT_KEYS:
            pl_module.log(f"test/instance_{key}", float(metrics[key]))
