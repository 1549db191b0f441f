"""Learning-rate schedules that torch has only as parts: linear warm-up followed by cosine decay,
by epochs (``warmup_cosine``) or over a wall-clock budget (``WallClockWarmupCosine``).

From random initialisation a high Adam learning rate can blow up the first updates of the plain
(un-normalised) VGG16 encoder; a short warm-up lets the decoder's BatchNorm statistics settle
before the full rate applies, and the cosine tail gives the small final steps that fine
boundaries need. Composed from torch's own ``LinearLR``, ``CosineAnnealingLR`` and
``SequentialLR`` so that checkpoints and resume behave like any torch scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from emseg.errors import ConfigError

__all__ = ["WallClockWarmupCosine", "budget_progress", "warmup_cosine"]


def warmup_cosine(
    optimizer: Optimizer,
    max_epochs: int,
    warmup_epochs: int = 1,
    start_factor: float = 0.1,
    eta_min: float = 1e-6,
) -> LRScheduler:
    """Linear warm-up from ``start_factor`` x lr over ``warmup_epochs``, then cosine to ``eta_min``.

    Stepped once per epoch (the module's ``interval: epoch``): epoch ``e < warmup_epochs`` runs at
    ``lr * (start_factor + (1 - start_factor) * e / warmup_epochs)``, the remaining
    ``max_epochs - warmup_epochs`` epochs follow a cosine from ``lr`` down to ``eta_min``.

    Raises:
        ValueError: the warm-up does not fit in the run, or a factor is out of range.
    """
    if not 0 <= warmup_epochs < max_epochs:
        raise ValueError(
            f"scheduler.warmup_epochs must be in [0, max_epochs={max_epochs}), got {warmup_epochs}"
        )
    if not 0 < start_factor <= 1:
        raise ValueError(f"scheduler.start_factor must be in (0, 1], got {start_factor}")
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
    if warmup_epochs == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=start_factor, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


class WallClockWarmupCosine(LRScheduler):
    """Linear warm-up over ``warmup_steps`` optimizer steps, then a cosine from ``lr`` down to
    ``eta_min`` over the rest of a wall-clock budget, whatever the number of steps it holds.

    A step-count schedule sized on one CPU either ends early on a faster one (budget unused) or
    is cut by ``trainer.max_time`` before it has annealed on a slower one; this one anneals at
    the budget on any machine. Neither torch nor Lightning has a time-based schedule, hence
    this class. The time comes from ``progress()`` (a fraction of the budget, 0 to 1), which the
    LightningModule binds to the trainer's ``Timer`` (``trainer.max_time``; its elapsed time is
    checkpointed, so a resumed run continues the same curve). Stepped after every optimizer step
    (``interval``). Because the rate depends on the clock, two runs of the same seed are not
    bit-identical, unlike a step-count schedule.

    Raises:
        ValueError: a bad warm-up length or factor.
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        start_factor: float = 0.1,
        eta_min: float = 1e-6,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 < start_factor <= 1:
            raise ValueError(f"scheduler.start_factor must be in (0, 1], got {start_factor}")
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.eta_min = float(eta_min)
        self.progress_at_warmup_end: float | None = None
        self._progress: Callable[[], float] = lambda: 0.0
        super().__init__(optimizer, last_epoch)

    def bind(self, progress: Callable[[], float]) -> None:
        """Read the elapsed fraction of the budget (0 at the start, 1 at it) from ``progress``."""
        self._progress = progress

    def _factor(self, step: int) -> float | None:
        """The warm-up's multiplier of ``lr`` at ``step``; ``None`` once the warm-up is over."""
        if step >= self.warmup_steps:
            return None
        return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        if factor is not None:
            return [base * factor for base in self.base_lrs]
        progress = min(max(float(self._progress()), 0.0), 1.0)
        if self.progress_at_warmup_end is None:  # the cosine starts where the warm-up ended
            self.progress_at_warmup_end = progress
        start = self.progress_at_warmup_end
        t = 1.0 if start >= 1.0 else min(max((progress - start) / (1.0 - start), 0.0), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * t))
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        # The bound clock is a closure over the trainer: not state, and not picklable.
        return {k: v for k, v in super().state_dict().items() if k != "_progress"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        progress = self._progress
        super().load_state_dict(state_dict)
        self._progress = progress


def budget_progress(trainer: Any) -> Callable[[], float]:
    """``progress()`` for :class:`WallClockWarmupCosine`: the fraction of ``trainer.max_time``
    spent in training so far, read from the trainer's ``Timer`` callback (which Lightning adds
    for ``max_time``; validation inside the fit loop counts, as it does for the stop).

    Raises:
        ConfigError: the trainer has no time budget.
    """
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None or timer.time_remaining() is None:
        raise ConfigError(
            "scheduler=wallclock_cosine anneals over a wall-clock budget: set trainer.max_time "
            "(e.g. trainer.max_time=00:01:00:00)"
        )

    def progress() -> float:
        elapsed, remaining = timer.time_elapsed(), timer.time_remaining()
        return elapsed / (elapsed + remaining) if elapsed + remaining > 0 else 1.0

    return progress
