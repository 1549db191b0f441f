"""Training entry point: build everything from the Hydra config, fit, test, choose the inference
settings on the validation hold-out (``choose_settings``), write metrics.json."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

from emseg.errors import ConfigError
from emseg.hardware import describe_hardware, set_torch_threads
from emseg.inference.settings import SETTING_GROUPS, SETTING_KEYS, applicable_evaluation
from emseg.io.atomic import write_json_atomic
from emseg.io.checkpoint import read_checkpoint
from emseg.model import build_net, prepare_fine_tuning
from emseg.module import SegmentationModule
from emseg.records import log_hparams, record_environment, run_hparams
from emseg.run_dir import claim_run_dir, finished_metrics
from emseg.settings_search import SettingsSearch, choose_and_store

__all__ = ["build", "check_config", "run"]

log = logging.getLogger(__name__)


def _launcher_threads() -> int | None:
    """Threads per job that the Hydra launcher implies: the cores shared fairly between
    parallel joblib jobs (oversubscribed OpenMP threads slow CPU training by an order of
    magnitude), or a submitit launcher's ``cpus_per_task`` (its local jobs all run at once)."""
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        cores = os.cpu_count() or 1
        n_jobs = int(launcher.get("n_jobs") or -1)
        n_jobs = cores if n_jobs <= 0 else min(n_jobs, cores)
        return max(1, cores // n_jobs)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return launcher.cpus_per_task
    return None


def _configure_threads(cfg: DictConfig) -> None:
    """Set torch's intra-op threads: ``torch_threads`` if given, else what the launcher implies,
    else torch's default."""
    threads = cfg.get("torch_threads")
    if threads is not None:
        set_torch_threads(threads, "torch_threads")
    else:
        set_torch_threads(_launcher_threads(), "hydra.launcher.cpus_per_task")


def _build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The configured callbacks plus the run's one :class:`Timer`.

    Without a logger, those that only log (LR monitor) are left out instead of failing, so that
    ``logger=none`` works with the default callbacks. The Timer enforces ``trainer.max_time``
    (the Trainer is built without it, so Lightning adds no second Timer) and carries the
    elapsed training time across resumes in its checkpoint state (``fit_seconds``).
    """
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return [*callbacks, Timer(duration=cfg.trainer.get("max_time"), interval="step")]


def _build_loggers(cfg: DictConfig) -> list:
    """The configured loggers (none with ``logger=none``)."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def _checkpoint_to_resume(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from, checked before any work is done.

    ``ckpt_path``: an explicit file, or ``last`` (Lightning's newest checkpoint of this run).
    ``resume: true``: continue from ``<output_dir>/checkpoints/last.ckpt`` when it exists,
    which makes a re-launched sweep with a fixed ``hydra.sweep.dir`` pick up where it stopped.
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if cfg.get("resume") and last.is_file() else None
    if ckpt == "last":
        return "last"
    path = Path(str(ckpt))
    if not path.exists():
        raise ConfigError(f"ckpt_path: {path} does not exist")
    # Optimizer and loop state may hold more than tensors: trusted here, it is the user's run.
    read_checkpoint(path, weights_only=False)
    return str(path)


def _first_mismatch(err: RuntimeError) -> str:
    """One line from torch's multi-line ``load_state_dict`` error: the first problem, counted."""
    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    if not problems:
        return str(err).strip()
    more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{problems[0].rstrip('.')}{more}"


def _check_distributed(trainer: L.Trainer) -> None:
    """Refuse DDP runs that would re-launch a whole Hydra multirun in every process.

    Lightning's ``ddp`` strategy starts the other processes of a node by running the command
    line again; in a local ``-m`` sweep that command is the whole sweep. On SLURM
    (``hydra/launcher=submitit_slurm``) SLURM starts one task per device instead, which works.
    """
    if trainer.world_size <= 1 or not HydraConfig.initialized():
        return
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is not None and environment.creates_processes_externally:
        return
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            "trainer.strategy=ddp starts its processes by re-running the command line, which "
            "a local multirun (-m) cannot do: run the sweep on SLURM "
            "(hydra/launcher=submitit_slurm, one task per device), run each configuration "
            "without -m, or use trainer.strategy=ddp_spawn"
        )


def _resolve_data_settings(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Replace ``data.mean`` / ``data.std: auto`` and a fractional ``data.val_slices`` in ``cfg``
    by what they resolve to on the training volume, so that ``config.yaml``, the records and
    every checkpoint hold numbers."""
    resolve = getattr(datamodule, "resolved_settings", None)
    for key, value in (resolve() if resolve is not None else {}).items():
        cfg.data[key] = value


def _run_config(cfg: DictConfig) -> dict:
    """The resolved config stored in every checkpoint, with only the evaluation settings that
    were chosen for this run's data (:func:`emseg.inference.settings.applicable_evaluation`)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["evaluation"] = applicable_evaluation(config)
    return config


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, SegmentationModule, L.Trainer]:
    """Instantiate the data module, the LightningModule and the Trainer from ``cfg``.

    ``cfg.module`` holds the module's own arguments; the network, loss, optimizer and scheduler
    come from their groups, and the resolved config travels into every checkpoint.
    """
    check_config(cfg)
    source = prepare_fine_tuning(cfg)  # init_from: a checkpoint's weights
    datamodule = instantiate(cfg.data)
    _resolve_data_settings(cfg, datamodule)
    module = instantiate(
        cfg.module,
        _recursive_=False,  # the parts arrive built; run_config's _target_ keys stay data
        _convert_="all",
        net=build_net(cfg, datamodule.in_channels, source),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=_run_config(cfg),
    )
    loggers = _build_loggers(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_build_callbacks(cfg, bool(loggers)),
        logger=loggers or False,
        max_time=None,
    )
    return datamodule, module, trainer


def run(cfg: DictConfig) -> dict[str, float]:
    """Train (and optionally test) the configured model.

    Args:
        cfg: the composed ``conf/train.yaml``.

    Returns:
        Final metrics: last-epoch ``train/*`` and ``val/*`` values, the best value of
        ``module.monitor`` (``val/best_fg_iou`` by default), ``fit_seconds`` (training time over
        every process of the run), ``fit_seconds_this_process``, ``global_step``, and
        ``test/*`` of the best checkpoint when ``test_after_fit`` is set.
    """
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    finished = finished_metrics(output_dir, bool(cfg.get("resume")))
    if finished is not None:
        return finished
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "high"))
    _configure_threads(cfg)
    datamodule, module, trainer = build(cfg)
    _check_distributed(trainer)
    ckpt_path = _checkpoint_to_resume(cfg, output_dir)
    # Under DDP every process runs this function; the run directory is rank zero's.
    claim = (
        claim_run_dir(output_dir, resuming=ckpt_path is not None)
        if trainer.is_global_zero
        else contextlib.nullcontext()
    )
    with claim:
        return _fit_and_record(cfg, datamodule, module, trainer, ckpt_path)


def _fit_and_record(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    module: SegmentationModule,
    trainer: L.Trainer,
    ckpt_path: str | None,
) -> dict[str, float]:
    """Record the run (config, environment, hparams), fit, optionally test the best checkpoint,
    and write ``metrics.json`` last, so that its presence means the run is complete."""
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        record_environment(output_dir)
    precision = str(cfg.trainer.precision)
    log.info(
        "hardware: %s; precision %s; channels_last %s",
        describe_hardware(),
        precision,
        cfg.module.channels_last,
    )
    hparams = run_hparams(cfg, precision)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            log_hparams(logger, hparams)

    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except RuntimeError as err:
        if ckpt_path and "state_dict" in str(err):  # checkpoint of another model
            raise ConfigError(
                f"ckpt_path: {ckpt_path} does not fit this model ({_first_mismatch(err)})"
            ) from err
        raise
    process_seconds = time.perf_counter() - start

    metrics = _final_metrics(trainer, process_seconds)
    if cfg.get("test_after_fit") and not datamodule.has_test_volume:
        log.info("test_after_fit: no test volume (data.test_image / test_mask): skipped")
    elif cfg.get("test_after_fit"):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in results[0].items()})
    if trainer.is_global_zero:
        summary = {"metrics": metrics, "hparams": hparams}
        if _wants_search(cfg, module):
            summary["evaluation"] = _choose_settings(cfg, trainer, module, metrics)
        write_json_atomic(output_dir / "metrics.json", summary)
    return metrics


def _has_settings(block: dict) -> bool:
    """Whether an evaluation block sets anything (the default one has empty groups)."""
    return any(block.get(g) for g in SETTING_GROUPS) or any(k in block for k in SETTING_KEYS)


def _wants_search(cfg: DictConfig, module: SegmentationModule) -> bool:
    """``choose_settings``: true, false, or auto = unless the run stores an evaluation block
    chosen for its data (``experiment=fast`` on EPFL)."""
    mode = cfg.get("choose_settings", False)
    if mode == "auto" and _has_settings((module.run_config or {}).get("evaluation") or {}):
        log.info("choose_settings=auto: the run's evaluation block applies to its data; kept")
        return False
    return bool(mode)


def _choose_settings(
    cfg: DictConfig, trainer: L.Trainer, module: SegmentationModule, metrics: dict[str, float]
) -> dict:
    """Choose the evaluation settings on the validation hold-out with the best checkpoint and
    store them in it (:mod:`emseg.settings_search`); adds ``settings_search/*`` to ``metrics``.

    Returns:
        The stored block, or ``{}`` when there is no best checkpoint (no validation).
    """
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if not best:
        log.warning("choose_settings: no best checkpoint (no validation hold-out?): skipped")
        return {}
    search: SettingsSearch = instantiate(cfg.settings_search)
    start = time.perf_counter()
    block = choose_and_store(best, search, module.run_config["data"], Path(cfg.paths.output_dir))
    metrics["settings_search/seconds"] = time.perf_counter() - start
    metrics["settings_search/fg_iou"] = float(block["validation_fg_iou"])
    metrics["settings_search/fg_iou_of_defaults"] = float(block["validation_fg_iou_of_defaults"])
    return block


def _best_key(monitor: str) -> str:
    """``val/fg_iou`` -> ``val/best_fg_iou``: the key of the best monitored value."""
    stage, _, name = monitor.rpartition("/")
    return f"{stage}/best_{name}" if stage else f"best_{name}"


def _final_metrics(trainer: L.Trainer, process_seconds: float) -> dict[str, float]:
    """Last logged scalars, training time and step, and the best monitored value.

    ``fit_seconds`` is the Timer's training time summed over every process of the run (it is
    restored from the checkpoint on resume); ``fit_seconds_this_process`` is this process's.
    """
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    metrics["fit_seconds"] = timer.time_elapsed("train")
    metrics["fit_seconds_this_process"] = process_seconds
    metrics["global_step"] = float(trainer.global_step)
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[_best_key(checkpoint.monitor)] = float(checkpoint.best_model_score)
    return metrics


def _positive(cfg: DictConfig, key: str, kind: type[int] | type[float]) -> None:
    """Raise :class:`ConfigError` unless ``cfg.<key>`` is unset or a positive ``kind``."""
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    try:
        number = kind(value)
        valid = math.isfinite(number) and number > 0 and (kind is float or number == float(value))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        what = "a positive integer" if kind is int else "a positive number"
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Reject config values that would only fail deep inside training (or not at all)."""
    _positive(cfg, "trainer.max_epochs", int)
    _positive(cfg, "optim.lr", float)
    mode = cfg.get("choose_settings", False)
    if mode not in (True, False, "auto"):
        raise ConfigError(f"choose_settings must be true, false or auto, got {mode!r}")
    if mode:
        instantiate(cfg.settings_search)  # its candidates are checked before training
