"""Every experiment and debug config runs, not only composes (a step or two of the tiny network
each, one multirun per group), and the report's VGG16-UNet trains, evaluates and exports once."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from emseg.resolvers import PROJECT_ROOT
from emseg.train import run
from tests.conftest import TINY_OVERRIDES, VGG16, names_after_swept_keys, run_script


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml"))


def sweep(swept: list[str], fixed: list[str], tmp_path: Path, capsys) -> list[Path]:
    """``python train.py -m <swept> <fixed>`` in this process; the run directories, by name."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *swept, *fixed, names_after_swept_keys(*fixed), f"hydra.sweep.dir={sweep_dir}"]
    code, err = run_script("train.py", args, tmp_path, capsys)
    assert code == 0, err[-3000:]
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir())


def test_every_experiment_runs(tmp_path, capsys, synthetic_data_dir):
    """experiment=glob(*) with debug=fdr: each experiment's groups, 2.5D input, callbacks and
    schedules build and take one training and one validation step."""
    # The experiments' own epoch counts stay (their schedules are sized by them); fdr stops
    # each run after one step.
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs=")]
    fixed = [*tiny, "debug=fdr", f"paths.data_dir={synthetic_data_dir}"]
    runs = sweep(["experiment=glob(*)"], fixed, tmp_path, capsys)
    names = options("experiment")
    assert [p.name for p in runs] == [f"experiment={name}" for name in names]
    for name, run_dir in zip(names, runs, strict=True):
        config = OmegaConf.load(run_dir / "config.yaml")
        assert name in config.tags and config.trainer.fast_dev_run
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        assert metrics["global_step"] == 1 and 0.0 <= metrics["val/fg_iou"] <= 1.0, name


def test_every_debug_config_runs(tmp_path, capsys, synthetic_data_dir):
    fixed = [*TINY_OVERRIDES, "logger=none", f"paths.data_dir={synthetic_data_dir}"]
    runs = sweep(["debug=glob(*)"], fixed, tmp_path, capsys)
    names = options("debug")
    assert [p.name for p in runs] == [f"debug={name}" for name in names]
    for name, run_dir in zip(names, runs, strict=True):
        config = OmegaConf.load(run_dir / "config.yaml")
        assert config.task_name == "debug"
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        assert metrics["global_step"] >= 1, name
        # debug=fdr turns checkpoints off; the others keep the default callbacks.
        assert (run_dir / "checkpoints" / "last.ckpt").exists() == (name != "fdr"), name


def test_vgg16_trains_evaluates_and_exports(tiny_cfg, tmp_path, capsys, synthetic_data_dir):
    """The report's network through the whole chain: fit, eval.py, export.py (verified)."""
    cfg = tiny_cfg(*VGG16, "logger=none", "test_after_fit=false", "callbacks.lr_monitor=null")
    metrics = run(cfg)
    assert metrics["global_step"] == 2 and 0.0 <= metrics["val/fg_iou"] <= 1.0
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["emseg_config"]["model"]
    assert saved["encoder_name"] == "vgg16"

    args = [f"ckpt_path={ckpt}", "data=epfl", f"paths.data_dir={synthetic_data_dir}"]
    code, err = run_script("eval.py", [*args, "limit_slices=2", "progress=false"], tmp_path, capsys)
    assert code == 0, err[-3000:]
    scores = json.loads((tmp_path / "hydra" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= scores["fg_iou"] <= 1.0

    exported = tmp_path / "exported" / "vgg16"
    exported.parent.mkdir()
    args = [f"ckpt_path={ckpt}", f"output={exported}"]
    code, err = run_script("export.py", args, tmp_path, capsys)
    assert code == 0, err[-3000:]
    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["verified"]["max_abs_diff"] < 1e-3
    assert card["input"]["height_width_multiple_of"] == 32
