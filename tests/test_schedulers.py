"""The warm-up + cosine schedule: its learning rates epoch by epoch, and its bad values."""

from __future__ import annotations

import math

import pytest
import torch

from emseg.schedulers import warmup_cosine


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
