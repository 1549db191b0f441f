"""Scaling out by configuration only: DDP over two gloo processes, submitit and Optuna sweeps.

The DDP, submitit and Optuna tests run the user's commands in subprocesses with the tiny
synthetic configuration; SLURM itself is not available here, so its launcher is checked by
composing it and rendering the sbatch script submitit would submit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import submitit
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import OmegaConf
from torchmetrics.classification import BinaryJaccardIndex

from emseg.data.datamodule import EMDataModule
from emseg.errors import ConfigError
from emseg.inference import load_checkpoint
from emseg.io import read_pair
from emseg.resolvers import PROJECT_ROOT
from tests.conftest import (
    CONFIG_DIR,
    TINY_OVERRIDES,
    names_after_swept_keys,
    run_script,
    run_script_captured,
)

EXCLUDE_TINY = names_after_swept_keys(*TINY_OVERRIDES, "test_after_fit=0")


def train_cli(args: list[str], data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python train.py <args>`` on the synthetic data, one torch thread per process."""
    env = {**os.environ, "EMSEG_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fg_iou(checkpoint: Path, image: np.ndarray, mask: np.ndarray) -> float:
    """Foreground IoU of ``checkpoint`` over whole slices, pooled as in training (p > 0.5)."""
    loaded = load_checkpoint(checkpoint)
    metric = BinaryJaccardIndex(threshold=0.5)
    # Use the thread count Lightning gives each of the two CPU DDP processes (cores // 2):
    # another count changes the float summation order, and pixels near p = 0.5 can flip.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        with torch.inference_mode():
            for z in range(image.shape[0]):
                x = torch.from_numpy(loaded.preprocessing(image[z : z + 1]))[None]
                probs = torch.sigmoid(loaded.net(x))
                metric.update(probs, torch.from_numpy(mask[z : z + 1][None] > 0).long())
    finally:
        torch.set_num_threads(threads)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------


def test_ddp_cpu_two_process_fit(tmp_path, synthetic_data_dir):
    """trainer=ddp_cpu: two gloo processes, one set of outputs, metrics of the whole volumes."""
    run_dir = tmp_path / "run"
    args = ["trainer=ddp_cpu", *TINY_OVERRIDES, f"hydra.run.dir={run_dir}"]
    # 3 validation slices on 2 processes: 2 + 1, none repeated; all 8 test slices (4 + 4).
    args += ["data.val_slices=3", "trainer.limit_val_batches=null"]
    args += ["trainer.limit_test_batches=null"]
    result = train_cli(args, synthetic_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    # Two processes ran, rank 1 as its own Hydra job in the same run directory ...
    assert "MEMBER: 1/2" in result.stderr and "MEMBER: 2/2" in result.stderr
    assert (run_dir / "train_ddp_process_1.log").exists()
    # ... but only rank zero wrote checkpoints, metrics and TensorBoard events.
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[1] == "last.ckpt", checkpoints
    assert checkpoints[0].startswith("best-epoch000-")
    assert list(tmp_path.rglob("metrics.json")) == [run_dir / "metrics.json"]
    # events.out.tfevents.<time>.<host>.<pid>.<n>: one writer for fit, one for test, one process
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["global_step"] == 2  # limit_train_batches steps, each on 2 x 2 patches

    # The logged metrics are those of the whole validation / test volume, i.e. synchronised
    # over both processes: a single-process evaluation of the best checkpoint reproduces them,
    # while rank zero's own slices (validation slices 0 and 2) give another value.
    best = run_dir / "checkpoints" / checkpoints[0]
    image, mask = read_pair(
        synthetic_data_dir / "epfl" / "training.tif",
        synthetic_data_dir / "epfl" / "training_groundtruth.tif",
    )
    val_image, val_mask = image[-3:], mask[-3:]
    assert metrics["val/fg_iou"] == pytest.approx(fg_iou(best, val_image, val_mask), abs=1e-6)
    rank_zero_only = fg_iou(best, val_image[::2], val_mask[::2])
    assert metrics["val/fg_iou"] != pytest.approx(rank_zero_only, abs=1e-6)
    assert metrics["val/best_fg_iou"] == pytest.approx(metrics["val/fg_iou"])
    test_image, test_mask = read_pair(
        synthetic_data_dir / "epfl" / "testing.tif",
        synthetic_data_dir / "epfl" / "testing_groundtruth.tif",
    )
    assert metrics["test/fg_iou"] == pytest.approx(fg_iou(best, test_image, test_mask), abs=1e-6)


def test_ddp_in_local_multirun_is_refused(tmp_path, synthetic_data_dir, capsys):
    """Lightning's ddp re-runs the command line per process: a local -m sweep cannot do that."""
    args = ["-m", "trainer=ddp_cpu", "loss=bce,dice", *TINY_OVERRIDES]
    args += [f"paths.data_dir={synthetic_data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    code, err = run_script("train.py", args, tmp_path, capsys)
    assert code == 2
    assert "error: trainer.strategy=ddp starts its processes by re-running" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_datamodule_shards_between_processes(synthetic_data_dir):
    """Per-device batches; every process gets an epoch of patches and its own validation
    slices, none repeated; more processes than validation slices is an error."""
    epfl = synthetic_data_dir / "epfl"
    paths = {
        "train_image": str(epfl / "training.tif"),
        "train_mask": str(epfl / "training_groundtruth.tif"),
        "test_image": str(epfl / "testing.tif"),
        "test_mask": str(epfl / "testing_groundtruth.tif"),
    }
    options = {"patch_size": 32, "batch_size": 2, "samples_per_epoch": 8, "num_workers": 0}
    shards = []
    for rank in range(2):
        dm = EMDataModule(**paths, **options, val_slices=3)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("fit")
        assert len(dm.train_set) == 16  # samples_per_epoch per device
        assert dm.train_dataloader().batch_size == 2  # per device
        sampler = dm.val_dataloader().sampler
        assert isinstance(sampler, UnrepeatedDistributedSampler)
        shards.append(list(sampler))
    assert shards == [[0, 2], [1]]
    dm = EMDataModule(**paths, **options, val_slices=1)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ConfigError, match="data.val_slices=1 is smaller than the 2 DDP"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"data.batch_size .*must be a positive integer"):
        EMDataModule(**paths, **{**options, "batch_size": 0})


# ---------------------------------------------------------------------------------------------
# SLURM / submitit
# ---------------------------------------------------------------------------------------------


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def sbatch_script(launcher_cfg, folder: Path, monkeypatch) -> str:
    """The sbatch file submitit would submit for ``launcher_cfg``, mapped as the plugin does."""
    # submitit refuses to build a SLURM executor where there is no srun.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    params.pop("_target_")
    params.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in common else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m submitit.core._submit", "0")


def test_submitit_slurm_launcher_config(tmp_path, monkeypatch):
    overrides = [
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=300",
        "hydra.launcher.mem_gb=64",
    ]
    cfg = compose_with_hydra(overrides)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    raw = OmegaConf.to_container(launcher)  # interpolations unresolved
    assert raw["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"].startswith("${emseg_run_dirname:")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    assert instantiate(launcher).params["partition"] == "gpu"
    script = sbatch_script(launcher, tmp_path, monkeypatch)
    for flag in [
        "--partition=gpu",
        "--time=300",
        "--mem=64GB",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=4",
    ]:
        assert f"#SBATCH {flag}\n" in script, script
    # The default trainer: one GPU, one task, one node per job.
    launcher = compose_with_hydra(["hydra/launcher=submitit_slurm"]).hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1, 1)


def test_cfg_hydra_shows_slurm_launcher(tmp_path, capsys):
    # The option first: run_script_captured appends overrides of its own.
    args = ["--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"]
    code, out, err = run_script_captured("train.py", args, tmp_path, capsys)
    assert code == 0, err[-2000:]
    launcher = yaml.safe_load(out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 120
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == "${trainer.devices}"


@pytest.mark.slow  # ~13 s: two submitit jobs; the SLURM launcher composes in a fast test
def test_submitit_local_two_job_sweep(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "loss=bce,dice", *TINY_OVERRIDES]
    args += ["test_after_fit=false", f"hydra.sweep.dir={sweep_dir}", EXCLUDE_TINY]
    result = train_cli(args, synthetic_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name != ".submitit")
    assert runs == ["loss=bce", "loss=dice"]
    for run in runs:
        assert (sweep_dir / run / "checkpoints" / "last.ckpt").exists()
        metrics = json.loads((sweep_dir / run / "metrics.json").read_text())
        assert metrics["hparams"]["loss"] == run.split("=")[1]
        assert 0.0 <= metrics["metrics"]["val/fg_iou"] <= 1.0
    # submitit's own files (one folder per job) live under the sweep directory.
    job_logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2


# ---------------------------------------------------------------------------------------------
# Optuna
# ---------------------------------------------------------------------------------------------


def test_optuna_search_config_composes():
    cfg = compose_with_hydra(["hparams_search=optuna_fg_iou"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/fg_iou"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"optim.lr", "loss", "data.patch_size"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.slow  # ~8 s: two Optuna trials; hparams_search=optuna composes in test_configs
def test_optuna_search_runs(tmp_path, synthetic_data_dir):
    """Two trials of the search end to end; patch sizes that fit the 96-pixel synthetic slices."""
    sweep_dir = tmp_path / "search"
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("data.patch_size=")]
    names = names_after_swept_keys(*tiny, "test_after_fit=0")
    # A search-space override on the command line replaces the config's.
    args = ["hparams_search=optuna_fg_iou", *tiny, "data.patch_size=choice(32,64)"]
    args += [
        "test_after_fit=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        names,
    ]
    result = train_cli(args, synthetic_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()]
    assert len(trials) == 2
    values = [json.loads((p / "metrics.json").read_text())["metrics"]["val/fg_iou"] for p in trials]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"optim.lr", "loss", "data.patch_size"}
