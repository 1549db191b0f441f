"""Segmentation metrics from torchmetrics, with mitochondria (label 1) as the positive class.

All metrics accumulate confusion counts over every labelled pixel of an epoch (micro averaging),
so the epoch value is the volume-level metric, not a mean of per-slice values. Pixels whose
target is :data:`emseg.data.labels.IGNORE` (no label) are left out everywhere.

* ``acc``: pixel accuracy (weak for sparse foreground: all-background scores high);
* ``fg_iou``: IoU of the mitochondria class, the metric of record;
* ``mean_iou``: mean of background IoU and foreground IoU;
* ``dice``: foreground Dice (= F1 of the foreground class).

For whole-volume evaluation (``eval.py``, :mod:`emseg.volume_scores`), :func:`binary_scores`
turns pooled confusion counts into every reported metric, and :class:`ThresholdSweep`
accumulates per-class probability histograms from which the foreground IoU at every threshold
of a grid is read off cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryStatScores,
)

from emseg.data.labels import IGNORE

__all__ = ["BinaryMeanIoU", "ThresholdSweep", "binary_scores", "segmentation_metrics"]


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
    kwargs = {"threshold": threshold, "ignore_index": IGNORE}
    return MetricCollection(
        {
            "acc": BinaryAccuracy(**kwargs),
            "fg_iou": BinaryJaccardIndex(**kwargs),
            "mean_iou": BinaryMeanIoU(**kwargs),
            "dice": BinaryF1Score(**kwargs),
        },
        compute_groups=False,
    )


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else empty


def binary_scores(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Every volume metric from pooled confusion counts (foreground = mitochondria).

    Ratios whose denominator is zero take their limit for a perfect prediction: an IoU or Dice
    with no foreground in target and prediction is 1; precision without predicted foreground is
    1 if nothing was missed, else 0 (and recall symmetrically).

    Returns:
        ``accuracy``, ``fg_iou`` = TP / (TP + FP + FN), ``bg_iou`` = TN / (TN + FP + FN),
        ``mean_iou`` (their mean), ``dice`` = 2TP / (2TP + FP + FN), ``precision`` =
        TP / (TP + FP), ``recall`` = TP / (TP + FN); all floats in [0, 1].
    """
    total = tp + fp + tn + fn
    fg_iou = _ratio(tp, tp + fp + fn, 1.0)
    bg_iou = _ratio(tn, tn + fp + fn, 1.0)
    return {
        "accuracy": _ratio(tp + tn, total, 1.0),
        "fg_iou": fg_iou,
        "bg_iou": bg_iou,
        "mean_iou": (fg_iou + bg_iou) / 2,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
    }


class ThresholdSweep(Metric):
    """Foreground IoU at every threshold of a grid, from per-class probability histograms.

    A pixel is foreground at threshold ``t`` when ``prob > t`` (as in torchmetrics). Each
    probability is counted in the bin of the number of grid thresholds below it, separately for
    target foreground and background, so ``compute`` is exact for the grid and the state is
    ``2 * (len(thresholds) + 1)`` counts whatever the volume size.

    Why not torchmetrics' ``BinaryPrecisionRecallCurve(thresholds=...)``, which holds the same
    information: above 50 000 pixels its update makes one pass over the pixels per threshold
    (91 here), several times slower per EM slice than one ``bucketize`` + two ``bincount``s
    (measured: experiments/2026-12-01_redesign/README.md).

    Args:
        thresholds: increasing thresholds in (0, 1); default 0.05, 0.06, ..., 0.95.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, thresholds: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if thresholds is None:
            thresholds = [round(0.05 + 0.01 * i, 2) for i in range(91)]
        grid = torch.tensor(list(thresholds), dtype=torch.float64)
        if grid.ndim != 1 or grid.numel() == 0 or bool((grid[1:] <= grid[:-1]).any()):
            raise ValueError("thresholds must be a non-empty increasing sequence")
        self.register_buffer("thresholds", grid, persistent=False)
        bins = grid.numel() + 1
        self.add_state("fg_hist", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bg_hist", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Count ``probs`` (float, any shape, in [0, 1]) by their ``target`` class ({0, 1};
        pixels with target IGNORE are left out)."""
        target = target.flatten()
        probs = probs.flatten()
        labelled = target != IGNORE
        if not bool(labelled.all()):
            probs, target = probs[labelled], target[labelled]
        bins = torch.bucketize(probs.double(), self.thresholds, right=False)
        fg = target > 0
        size = self.thresholds.numel() + 1
        self.fg_hist += torch.bincount(bins[fg], minlength=size)
        self.bg_hist += torch.bincount(bins[~fg], minlength=size)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(thresholds, fg_iou)``: float64 vectors of the grid length."""
        # Pixels above threshold j are those in bins j + 1 and higher: reversed cumulative sums.
        tp = self.fg_hist.flip(0).cumsum(0).flip(0)[1:].double()
        fp = self.bg_hist.flip(0).cumsum(0).flip(0)[1:].double()
        fn = self.fg_hist.sum().double() - tp
        denominator = tp + fp + fn
        iou = torch.where(denominator > 0, tp / denominator.clamp_min(1), torch.ones_like(tp))
        return self.thresholds.clone(), iou
