"""Shared fixtures: synthetic EM-like volumes on disk and composed Hydra configs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import emseg  # noqa: F401  (registers resolvers)
from emseg.resolvers import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "conf")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), each worker's torch gets
    its share of the cores: two workers with torch's default (every core) each would
    oversubscribe OpenMP, which slows both several-fold."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def make_volume(depth: int = 8, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A toy EM volume: bright ellipses ("mitochondria") on noisy mid-grey background.

    Returns ``(image uint8 (Z, Y, X), mask uint8 {0, 255})``. The task is easy on purpose, so
    a few optimisation steps visibly reduce the loss.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((depth, size, size), bool)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.06, 0.14, 2) * size
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask |= blob[None]
    image = np.where(mask, 200, 90) + rng.normal(0, 12, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A data directory laid out like ``data/`` (epfl/ and lucchipp/) with synthetic volumes."""
    root = tmp_path_factory.mktemp("data")
    train_img, train_msk = make_volume(seed=0)
    test_img, test_msk = make_volume(seed=1)
    for sub in ("epfl", "lucchipp"):
        (root / sub).mkdir()
        tifffile.imwrite(root / sub / "training_groundtruth.tif", train_msk)
        tifffile.imwrite(root / sub / "testing_groundtruth.tif", test_msk)
    tifffile.imwrite(root / "epfl" / "training.tif", train_img)
    tifffile.imwrite(root / "epfl" / "testing.tif", test_img)
    return root


# A few CPU steps of the small network (conf/model/tiny.yaml) on the synthetic volume: what the
# tests of plumbing (fit, resume, sweeps, CLI faults, eval / predict / export) train.
TINY_OVERRIDES = [
    "model=tiny",
    "data.patch_size=64",
    "data.batch_size=2",
    "data.val_slices=2",
    "data.num_workers=0",
    "data.samples_per_epoch=16",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "++callbacks.progress_bar=null",
    # The search after fit (+1 s a run) is tested in tests/test_settings_search.py.
    "choose_settings=false",
]


# Appended to TINY_OVERRIDES (the later model choice wins): the report's VGG16-UNet, random init,
# for the few tests that must run the real network.
VGG16 = ["model=unet_vgg16", "model.encoder_weights=null"]


def names_after_swept_keys(*fixed: str) -> str:
    """The override that names sweep runs after the swept keys only, leaving ``fixed`` out
    (e.g. ``loss=dice,optim=adam`` instead of every tiny override), as a user would."""
    keys = ",".join(o.split("=")[0].lstrip("+~") for o in fixed)
    return f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"


def compose_train(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` like ``train.py`` would, with a fixed output directory."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
    return cfg


def compose_cfg(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` (eval, predict, measure...) without progress bars, with a
    fixed output directory."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=[*overrides, "progress=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path, synthetic_data_dir):
    """A factory for tiny CPU training configs on the synthetic volume."""

    def factory(*extra: str) -> DictConfig:
        return compose_train([*TINY_OVERRIDES, *extra], tmp_path / "run", synthetic_data_dir)

    return factory


def real_data_dir() -> Path | None:
    """The prepared EPFL data: $EMSEG_DATA_DIR, ./data, or ../shared/data (whichever exists)."""
    candidates = [
        os.environ.get("EMSEG_DATA_DIR"),
        PROJECT_ROOT / "data",
        PROJECT_ROOT.parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "epfl" / "training.tif").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("EPFL data not found (run `make data` or set EMSEG_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    """``last.ckpt`` of a two-step training run on the synthetic volume (built once)."""
    from emseg.train import run as run_train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    extra = ["logger=none", "test_after_fit=false", "trainer.limit_val_batches=1"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    run_train(compose_train([*TINY_OVERRIDES, *extra], run_dir, synthetic_data_dir))
    return run_dir / "checkpoints" / "last.ckpt"


def run_script(script: str, args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """``python <script> <args>`` run in this process: (exit code, stderr).

    Same root script, same exit codes and stderr as a subprocess, without its start-up cost.
    """
    code, _, err = run_script_captured(script, args, tmp_path, capsys)
    return code, err


def _loggers() -> list[logging.Logger]:
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    return [logger for logger in loggers if isinstance(logger, logging.Logger)]  # not PlaceHolder


def run_script_captured(
    script: str, args: list[str], tmp_path: Path, capsys
) -> tuple[int, str, str]:
    """:func:`run_script`, with stdout too: (exit code, stdout, stderr)."""
    import runpy
    import sys

    quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    argv = sys.argv
    sys.argv = [script, *args, *quiet, f"hydra.run.dir={tmp_path / 'hydra'}"]
    # Hydra's logging configs (disabled.yaml included) disable every existing logger: give the
    # later tests (caplog) the loggers back as they were.
    states = {logger: logger.disabled for logger in _loggers()}
    root_level = logging.root.level
    GlobalHydra.instance().clear()
    capsys.readouterr()
    try:
        runpy.run_path(str(PROJECT_ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for logger in _loggers():  # those created meanwhile: enabled
            logger.disabled = states.get(logger, False)
        logging.root.setLevel(root_level)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
