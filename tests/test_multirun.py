"""The user's 2 x 2 ablation command, verbatim plus tiny overrides, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from emseg.resolvers import PROJECT_ROOT
from tests.conftest import TINY_OVERRIDES, names_after_swept_keys


def test_user_sweep_makes_four_runs(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "train.py",
        "-m",
        "loss=bce,dice",
        "optim=adam,adagrad",
        *TINY_OVERRIDES,
        "test_after_fit=false",
        f"hydra.sweep.dir={sweep_dir}",
        names_after_swept_keys(*TINY_OVERRIDES, "test_after_fit=0"),
    ]
    env = {**os.environ, "EMSEG_DATA_DIR": str(synthetic_data_dir)}
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]

    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in runs] == [
        "loss=bce,optim=adagrad",
        "loss=bce,optim=adam",
        "loss=dice,optim=adagrad",
        "loss=dice,optim=adam",
    ]
    for run in runs:
        assert (run / ".hydra" / "config.yaml").exists()
        assert (run / "checkpoints" / "last.ckpt").exists()
        assert list((run / "checkpoints").glob("best-*.ckpt"))
        events = list((run / "tb").glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events in {run}"
        accumulator = EventAccumulator(str(run / "tb")).Reload()
        assert "val/fg_iou" in accumulator.Tags()["scalars"]
        assert "train/loss_epoch" in accumulator.Tags()["scalars"]
        assert "val/examples" in accumulator.Tags()["images"]
        assert (
            "lr-Adam" in accumulator.Tags()["scalars"]
            or "lr-Adagrad" in accumulator.Tags()["scalars"]
        )
        hparams = accumulator.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            hparams["_hparams_/session_start_info"]
        ).session_start_info.hparams
        assert start["loss"].string_value in run.name and start["optim"].string_value in run.name
        assert start["lr"].number_value > 0
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            hparams["_hparams_/experiment"]
        ).experiment
        assert "val/fg_iou" in {m.name.tag for m in experiment.metric_infos}
        # no placeholder value at step 0: the first val/fg_iou point is a real validation
        assert accumulator.Scalars("val/fg_iou")[0].step > 0
    hparams_files = list(sweep_dir.rglob("events.out.tfevents.*"))
    assert len(hparams_files) >= 4
    assert Path(sweep_dir / "multirun.yaml").exists()
