"""Loss helpers. The losses themselves come from torch and ``segmentation_models_pytorch.losses``.

All losses take ``logits`` float ``(N, 1, Y, X)`` and ``target`` float ``(N, 1, Y, X)`` in
{0, 1, IGNORE}: pixels without labels (:data:`emseg.data.labels.IGNORE`) must not count, so every
loss config sets ``ignore_index: 255`` (smp's Dice and Focal losses take it natively;
:class:`MaskedBCEWithLogitsLoss` for BCE; a test checks each config).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from emseg.data.labels import IGNORE

__all__ = ["MaskedBCEWithLogitsLoss", "WeightedSum"]


class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits, averaged over the labelled pixels only.

    Hand-written because neither library has it: ``torch.nn.BCEWithLogitsLoss`` has no
    ``ignore_index``, and smp's ``SoftBCEWithLogitsLoss(ignore_index=...)`` zeroes the ignored
    pixels but still divides by all pixels, so a patch's weight would shrink with its unlabelled
    share. With every pixel labelled the result is exactly ``BCEWithLogitsLoss``'s.

    Args:
        ignore_index: target value of pixels to leave out (``None``: none).
    """

    def __init__(self, ignore_index: int | None = IGNORE) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return F.binary_cross_entropy_with_logits(logits, target)
        labelled = target != self.ignore_index
        if bool(labelled.all()):
            return F.binary_cross_entropy_with_logits(logits, target)
        if not bool(labelled.any()):
            return logits.sum() * 0.0  # no labelled pixel in the batch: no gradient
        return F.binary_cross_entropy_with_logits(logits[labelled], target[labelled])


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
