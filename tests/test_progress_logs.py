"""What a run tells a user who reads only its log and records: progress lines when the output is
not a terminal (nohup, SLURM logs), and the data it actually used."""

from __future__ import annotations

import logging

import pytest

from emseg.callbacks import StepProgressLog, _duration
from emseg.cli import progress_bar
from emseg.errors import ConfigError
from emseg.train import run


def test_training_logs_a_line_every_n_steps(tiny_cfg, caplog):
    cfg = tiny_cfg(
        "callbacks.step_progress.every_n_steps=1",
        "callbacks.step_progress.only_without_terminal=false",
        "logger=none",
        "test_after_fit=false",
    )
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" (")[0] for line in lines] == ["step 1/2", "step 2/2"], lines
    assert "loss " in lines[0] and "s/step" in lines[0] and "ETA" in lines[0]


def test_step_progress_rejects_a_zero_interval():
    with pytest.raises(ConfigError, match="every_n_steps"):
        StepProgressLog(every_n_steps=0)
    assert (_duration(3725), _duration(185), _duration(7)) == ("1h02m", "3m05s", "7s")


def test_progress_bar_without_a_terminal_logs_tenths(caplog):
    # pytest captures stderr, so it is not a terminal here: the logged form is used.
    with caplog.at_level(logging.INFO, logger="emseg.progress"):
        assert list(progress_bar(range(20), 20, "predict x.tif")) == list(range(20))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("predict x.tif: 2/20 slices")
    assert lines[-1].startswith("predict x.tif: 20/20 slices") and "ETA 0 s" in lines[-1]


def test_hparams_name_the_data_actually_used(tiny_cfg):
    from emseg.records import run_hparams

    cfg = tiny_cfg()
    assert run_hparams(cfg, "32-true")["data"] == "training.tif"  # outside Hydra: the file


def test_the_eta_of_a_wall_clock_run_is_what_is_left_of_max_time(caplog):
    """A run stopped by trainer.max_time (scheduler=wallclock_cosine sets a huge max_epochs) is
    due when its budget ends, not after its nominal step count."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    trainer = SimpleNamespace(
        global_step=0,
        is_global_zero=True,
        estimated_stepping_batches=10_000_000,
        current_epoch=0,
        callback_metrics={},
        callbacks=[Timer(duration="00:00:10:00")],  # not started: 10 minutes left
    )
    progress = StepProgressLog(every_n_steps=50, only_without_terminal=False)
    progress.on_train_start(trainer, None)
    progress._start -= 100.0  # 2 s per step: the nominal steps would take months
    trainer.global_step = 50
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        progress.on_train_batch_end(trainer, None, None, None, 49)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert line.endswith("ETA 10m00s"), line
    trainer.callbacks = []  # no budget: the step count's ETA, days away
    caplog.clear()
    trainer.global_step = 100
    with caplog.at_level(logging.INFO, logger="emseg.callbacks"):
        progress.on_train_batch_end(trainer, None, None, None, 99)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert line.split("ETA ")[1].startswith("27"), line  # ~1e7 steps x 1 s: 27xx hours
