"""Segmentation metrics from torchmetrics, with mitochondria (label 1) as the positive class.

All metrics accumulate confusion counts over every pixel of an epoch (micro averaging), so the
epoch value is the volume-level metric, not a mean of per-slice values.

* ``acc``: pixel accuracy (weak here: all-background scores ~0.947 on the EPFL test volume);
* ``fg_iou``: IoU of the mitochondria class, the metric of record;
* ``mean_iou``: mean of background IoU and foreground IoU;
* ``dice``: foreground Dice (= F1 of the foreground class).
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryStatScores,
)

__all__ = ["BinaryMeanIoU", "segmentation_metrics"]


class BinaryMeanIoU(BinaryStatScores):
    """Mean of background and foreground IoU from the same confusion counts."""

    higher_is_better = True
    full_state_update = False

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        fg = tp / (tp + fp + fn).clamp_min(1)
        bg = tn / (tn + fn + fp).clamp_min(1)
        return ((fg + bg) / 2).float()


def segmentation_metrics(threshold: float = 0.5) -> MetricCollection:
    """The metric collection; ``update(probs, target)`` with probabilities in [0, 1].

    Args:
        threshold: probability above which a pixel counts as mitochondrion.
    """
    kwargs = {"threshold": threshold}
    return MetricCollection(
        {
            "acc": BinaryAccuracy(**kwargs),
            "fg_iou": BinaryJaccardIndex(**kwargs),
            "mean_iou": BinaryMeanIoU(**kwargs),
            "dice": BinaryF1Score(**kwargs),
        },
        compute_groups=False,
    )
