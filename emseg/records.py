"""What every run records about itself: command, commit, versions, hardware, hyper-parameters.

These make a run directory self-describing (``environment.json``, the TensorBoard hparams tab),
so a result can be traced to the exact code and machine that produced it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from emseg.hardware import describe_hardware
from emseg.io.atomic import write_json_atomic
from emseg.metrics import segmentation_metrics
from emseg.resolvers import PROJECT_ROOT

__all__ = ["git_commit", "record_environment", "run_hparams", "log_hparams", "HPARAM_METRICS"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """The commit of the code that runs, or ``unknown`` outside a git checkout."""
    return (_git("rev-parse", "HEAD") or "").strip() or "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the commit alone does not describe the
    code then); ``None`` outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def _choices() -> dict[str, str]:
    """Config-group choices (loss, optim, ...) when running under ``@hydra.main``."""
    if HydraConfig.initialized():
        return {
            k: str(v)
            for k, v in HydraConfig.get().runtime.choices.items()
            if not k.startswith("hydra") and v is not None
        }
    return {}


def _data_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    """``data.name`` if given; else the data group's name, unless the command line changed
    its training files: then the (first) training image's file name (a run on other files
    must not be recorded as ``epfl``)."""
    if cfg.data.get("name"):
        return str(cfg.data.name)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if "data" in choices and not keys & {"data.train_image", "data.train_mask", "data.volumes"}:
        return choices["data"]
    volumes = cfg.data.get("volumes")
    image = volumes[0]["image"] if volumes else cfg.data.train_image
    return Path(str(image).rstrip("/")).name


def _target_name(node: Any) -> str:
    if isinstance(node, DictConfig) and "_target_" in node:
        return str(node._target_).rsplit(".", 1)[-1]
    return "none"


def run_hparams(cfg: DictConfig, precision: str) -> dict[str, Any]:
    """The scalar hyper-parameters shown in TensorBoard's hparams tab."""
    choices = _choices()
    return {
        "loss": choices.get("loss", _target_name(cfg.loss)),
        "optim": choices.get("optim", _target_name(cfg.optim)),
        "lr": float(cfg.optim.lr),
        "weight_decay": float(cfg.optim.get("weight_decay", 0.0)),
        "l2_last_two": float(cfg.module.l2_last_two),
        "scheduler": choices.get("scheduler", _target_name(cfg.scheduler)),
        "data": _data_name(cfg, choices),
        "patch_size": int(cfg.data.patch_size),
        "batch_size": int(cfg.data.batch_size),
        "context": int(cfg.data.context),
        "max_epochs": int(cfg.trainer.max_epochs),
        "steps_per_epoch": str(cfg.trainer.limit_train_batches),
        "precision": precision,
        "encoder_weights": str(cfg.model.get("encoder_weights")),  # none: not an smp model
        "seed": -1 if cfg.get("seed") is None else int(cfg.seed),
    }


HPARAM_METRICS = [
    f"{stage}/{name}" for stage in ("val", "test") for name in segmentation_metrics()
] + [f"test/instance_{name}" for name in ("ap", "ap50", "f1", "n_pred")]
"""The metric columns of the hparams tab: every pixel metric the module logs, per evaluated
split, and the main instance metrics of :class:`emseg.callbacks.InstanceMetricsAtTest`."""


def log_hparams(logger: TensorBoardLogger, hparams: dict[str, Any]) -> None:
    """Write the hparams-tab summary listing ``HPARAM_METRICS`` as its metric columns.

    Unlike ``TensorBoardLogger.log_hyperparams(params, metrics)`` this logs no placeholder
    metric values, which would add a false point at step 0 to every curve; the table shows
    the last logged value of each tag.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    summaries = hparams_summary(hparams, dict.fromkeys(HPARAM_METRICS, 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in summaries:
        writer.add_summary(summary)


def record_environment(output_dir: Path) -> None:
    """Write what is needed to rerun this run exactly: command, commit, versions, hardware."""
    import hydra
    import segmentation_models_pytorch as smp
    import torchmetrics

    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "packages": {
            "torch": torch.__version__,
            "lightning": L.__version__,
            "hydra-core": hydra.__version__,
            "segmentation-models-pytorch": smp.__version__,
            "torchmetrics": torchmetrics.__version__,
        },
        "hardware": describe_hardware(),
    }
    write_json_atomic(output_dir / "environment.json", record)
