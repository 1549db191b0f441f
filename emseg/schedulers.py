"""Learning-rate schedules that torch has only as parts: linear warm-up followed by cosine decay.

From random initialisation a high Adam learning rate can blow up the first updates of the plain
(un-normalised) VGG16 encoder; a short warm-up lets the decoder's BatchNorm statistics settle
before the full rate applies, and the cosine tail gives the small final steps that fine
boundaries need. Composed from torch's own ``LinearLR``, ``CosineAnnealingLR`` and
``SequentialLR`` so that checkpoints and resume behave like any torch scheduler.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

__all__ = ["warmup_cosine"]


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
