"""Loss helpers. The losses themselves come from torch and ``segmentation_models_pytorch.losses``.

All losses take ``logits`` float ``(N, 1, Y, X)`` and ``target`` float ``(N, 1, Y, X)`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["WeightedSum"]


class WeightedSum(nn.Module):
    """A weighted sum of losses, e.g. BCE + Dice (smp has no combinator).

    Args:
        losses: name -> loss module.
        weights: name -> weight (default 1.0 for every loss).
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        weights = dict(weights or {})
        unknown = set(weights) - set(self.losses)
        if unknown:
            raise ValueError(f"weights given for unknown losses {sorted(unknown)}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[n] * loss(logits, target) for n, loss in self.losses.items())
