"""The warm-up + cosine schedules: by epochs (learning rates epoch by epoch), over a wall-clock
budget (by a fake clock, and in a tiny training stopped by trainer.max_time), and bad values."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from emseg.schedulers import WallClockWarmupCosine, warmup_cosine


def _lrs(epochs: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, max_epochs=epochs, **kwargs)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_rises_linearly_then_cosine_decays_to_eta_min():
    lrs = _lrs(6, warmup_epochs=2, start_factor=0.2, eta_min=0.0)
    assert lrs[:3] == pytest.approx([0.2, 0.6, 1.0])
    # Cosine over the 4 epochs after warm-up: 1, cos-halfway points, towards 0.
    expected = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs[2:] == pytest.approx(expected)


def test_no_warmup_is_plain_cosine():
    assert _lrs(4, warmup_epochs=0, eta_min=0.0)[0] == pytest.approx(1.0)
    assert _lrs(4, warmup_epochs=0, eta_min=0.0)[2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"warmup_epochs": 5}, "warmup_epochs"), ({"start_factor": 0.0}, "start_factor")],
)
def test_bad_values_are_named(kwargs, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        warmup_cosine(optimizer, max_epochs=5, **kwargs)


class FakeClock:
    """The budget's elapsed fraction, set by hand."""

    def __init__(self) -> None:
        self.fraction = 0.0

    def __call__(self) -> float:
        return self.fraction


def _wallclock(**kwargs) -> tuple[torch.optim.Optimizer, WallClockWarmupCosine, FakeClock]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WallClockWarmupCosine(optimizer, **kwargs)
    clock = FakeClock()
    scheduler.bind(clock)
    return optimizer, scheduler, clock


def _step(optimizer, scheduler, clock, fraction: float) -> float:
    clock.fraction = fraction
    optimizer.step()
    scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_wallclock_warmup_by_steps_then_cosine_by_time_not_steps():
    optimizer, scheduler, clock = _wallclock(warmup_steps=4, start_factor=0.2, eta_min=0.0)
    warmup = [optimizer.param_groups[0]["lr"]]
    warmup += [_step(optimizer, scheduler, clock, 0.01 * k) for k in range(1, 4)]
    assert warmup == pytest.approx([0.2, 0.4, 0.6, 0.8])
    # The warm-up ended at 4 % of the budget: the cosine spans the remaining 96 %.
    assert _step(optimizer, scheduler, clock, 0.04) == pytest.approx(1.0)
    assert scheduler.progress_at_warmup_end == pytest.approx(0.04)
    for _ in range(50):  # many steps in the same instant change nothing: time drives the decay
        assert _step(optimizer, scheduler, clock, 0.52) == pytest.approx(0.5)
    assert _step(optimizer, scheduler, clock, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert _step(optimizer, scheduler, clock, 1.3) == pytest.approx(0.0, abs=1e-12)  # overrun


def test_wallclock_state_resumes_the_same_curve_without_the_clock():
    optimizer, scheduler, clock = _wallclock(warmup_steps=2, eta_min=0.0)
    for fraction in (0.1, 0.2, 0.4):
        _step(optimizer, scheduler, clock, fraction)
    state = scheduler.state_dict()
    assert "_progress" not in state
    torch.save(state, io.BytesIO())  # a checkpoint can hold it

    optimizer2, resumed, clock2 = _wallclock(warmup_steps=2, eta_min=0.0)
    resumed.load_state_dict(state)
    assert resumed._progress is clock2 and resumed.progress_at_warmup_end == pytest.approx(0.2)
    assert _step(optimizer2, resumed, clock2, 0.6) == pytest.approx(
        _step(optimizer, scheduler, clock, 0.6)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"warmup_steps": -1}, "warmup_steps"), ({"start_factor": 1.5}, "start_factor")],
)
def test_wallclock_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _wallclock(**kwargs)


def test_wallclock_schedule_in_training_anneals_at_the_budget(tiny_cfg):
    from emseg.train import run as run_train

    cfg = tiny_cfg(
        "scheduler=wallclock_cosine",
        "scheduler.warmup_steps=0",  # however few steps a loaded machine fits in the budget
        "trainer.max_epochs=100000",
        "trainer.max_time=00:00:00:03",
        "logger=none",
        "test_after_fit=false",
        "callbacks.validation_images=null",
    )
    run_train(cfg)
    checkpoint = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False
    )
    (state,) = checkpoint["lr_schedulers"]
    # Stepped once per optimizer step, stopped by the 3 s budget (not by 100000 epochs), and
    # annealed from 1e-4 to about eta_min at the budget.
    assert 1 <= checkpoint["global_step"] == state["last_epoch"] < 2 * 100000
    assert checkpoint["epoch"] < 100000
    assert state["_last_lr"][0] < 0.05 * cfg.optim.lr


def test_wallclock_schedule_without_a_budget_is_a_config_error(tiny_cfg):
    from emseg.errors import ConfigError
    from emseg.train import run as run_train

    cfg = tiny_cfg("scheduler=wallclock_cosine", "logger=none", "test_after_fit=false")
    with pytest.raises(ConfigError, match="trainer.max_time"):
        run_train(cfg)
