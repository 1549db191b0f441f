"""Whole-volume scores of a probability stream against a labelled volume.

Metrics come from confusion counts pooled over the whole volume at one threshold (never a mean
of per-slice values), computed with torchmetrics' :class:`BinaryStatScores`. Foreground IoU is
also reported separately for an image-edge band of ``edge_band`` pixels along the four borders
of every slice and for the interior, and with a 95 % confidence interval from a bootstrap over
3D blocks of the volume (:mod:`emseg.intervals`: how far the score could move on another
volume like this one). The threshold that would maximise foreground IoU on the
volume (:class:`~emseg.metrics.ThresholdSweep`) is reported for information only: it is fitted
to the scored data and never used for the headline numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torchmetrics.classification import BinaryStatScores

from emseg.data.labels import IGNORE
from emseg.errors import ConfigError
from emseg.intervals import DEFAULT_BLOCK, BlockCounts, fg_iou_interval
from emseg.metrics import ThresholdSweep, binary_scores
from emseg.postprocess import remove_small_components

__all__ = ["INTERVAL_KEYS", "METRIC_KEYS", "VolumeScores", "edge_band_mask", "evaluate_volume"]

METRIC_KEYS = (
    "accuracy",
    "fg_iou",
    "mean_iou",
    "bg_iou",
    "dice",
    "precision",
    "recall",
    "edge_fg_iou",
    "interior_fg_iou",
    "best_threshold",
    "fg_iou_at_best_threshold",
)
# The bounds of fg_iou's block-bootstrap confidence interval (None: too few blocks to say).
INTERVAL_KEYS = ("fg_iou_ci_low", "fg_iou_ci_high")


def edge_band_mask(height: int, width: int, band: int) -> np.ndarray:
    """Boolean ``(Y, X)``: True for pixels less than ``band`` pixels from the slice border."""
    yy = np.arange(height)[:, None]
    xx = np.arange(width)[None, :]
    distance = np.minimum(np.minimum(yy, height - 1 - yy), np.minimum(xx, width - 1 - xx))
    return distance < band


class VolumeScores:
    """Pooled confusion counts (whole slice, edge band, interior) and a threshold sweep.

    Args:
        edge_band: width in pixels of the border band of every slice.
        threshold: probability above which a pixel is foreground (for :meth:`update_probs`).
        interval_block: ``(z, y, x)`` voxels of the blocks the confidence interval resamples.
        confidence: level of the fg IoU interval (:data:`INTERVAL_KEYS`).
    """

    REGIONS = ("all", "edge", "interior")

    def __init__(
        self,
        edge_band: int = 32,
        threshold: float = 0.5,
        interval_block: tuple[int, int, int] = DEFAULT_BLOCK,
        confidence: float = 0.95,
    ) -> None:
        if int(edge_band) < 0:
            raise ConfigError(f"edge_band must be >= 0 pixels, got {edge_band}")
        self.edge_band, self.threshold = int(edge_band), float(threshold)
        self.stats = {region: BinaryStatScores(validate_args=False) for region in self.REGIONS}
        self.sweep = ThresholdSweep()
        self.blocks = BlockCounts(interval_block)
        self.confidence = float(confidence)
        self._edge: torch.Tensor | None = None

    def _edge_mask(self, shape: tuple[int, int]) -> torch.Tensor:
        if self._edge is None or tuple(self._edge.shape) != shape:
            self._edge = torch.from_numpy(edge_band_mask(*shape, self.edge_band))
        return self._edge

    def update_probs(self, probs: np.ndarray, target: np.ndarray) -> None:
        """Add the threshold-sweep histogram of float ``(Y, X)`` probabilities."""
        self.sweep.update(torch.from_numpy(probs), torch.from_numpy(target))

    def update_prediction(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add the confusion counts of a binary ``(Y, X)`` prediction against ``target``
        ({0, 1}; pixels with target IGNORE are left out)."""
        pred = torch.from_numpy(np.ascontiguousarray(prediction > 0)).long()
        true = torch.from_numpy(np.ascontiguousarray(target > 0)).long()
        edge = self._edge_mask(tuple(pred.shape))
        unlabelled = target == IGNORE
        self.blocks.add(prediction > 0, (target > 0) & ~unlabelled, ~unlabelled)
        if unlabelled.all():
            return
        if unlabelled.any():
            labelled = torch.from_numpy(~unlabelled)
            pred, true, edge = pred[labelled], true[labelled], edge[labelled]
        self.stats["all"].update(pred, true)
        if edge.any():
            self.stats["edge"].update(pred[edge], true[edge])
        if not edge.all():
            self.stats["interior"].update(pred[~edge], true[~edge])

    def counts(self) -> dict[str, dict[str, int]]:
        """``{region: {tp, fp, tn, fn}}``."""
        result = {}
        for region, stat in self.stats.items():
            tp, fp, tn, fn = (int(v.sum()) for v in (stat.tp, stat.fp, stat.tn, stat.fn))
            result[region] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
        return result

    def compute(self) -> dict[str, float | None]:
        """The metrics of :data:`METRIC_KEYS` (see :func:`emseg.metrics.binary_scores`) and
        the interval's bounds (:data:`INTERVAL_KEYS`, ``None`` when too few blocks)."""
        counts = self.counts()
        metrics = binary_scores(**counts["all"])
        metrics["edge_fg_iou"] = binary_scores(**counts["edge"])["fg_iou"]
        metrics["interior_fg_iou"] = binary_scores(**counts["interior"])["fg_iou"]
        thresholds, ious = self.sweep.compute()
        best = int(torch.argmax(ious))  # first maximum: the lowest best threshold
        metrics["best_threshold"] = float(thresholds[best])
        metrics["fg_iou_at_best_threshold"] = float(ious[best])
        interval = self.interval()
        metrics["fg_iou_ci_low"] = None if interval is None else interval["low"]
        metrics["fg_iou_ci_high"] = None if interval is None else interval["high"]
        return metrics

    def interval(self) -> dict | None:
        """fg IoU's block-bootstrap interval (:func:`emseg.intervals.fg_iou_interval`)."""
        return fg_iou_interval(self.blocks.counts(), self.confidence)

    def block_record(self) -> dict:
        """The block counts behind the interval, as metrics.json keeps them (``compare.py``
        pairs two records of the same volume): ``{block_zyx, tp_fp_fn}``."""
        return {"block_zyx": list(self.blocks.block), "tp_fp_fn": self.blocks.counts().tolist()}


def evaluate_volume(
    probabilities: Iterable[np.ndarray],
    target: np.ndarray,
    *,
    edge_band: int = 32,
    threshold: float = 0.5,
    min_size: int = 0,
    connectivity: int = 1,
    scores: VolumeScores | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Score a stream of probability slices against a labelled volume.

    Args:
        probabilities: float ``(Y, X)`` slices in [0, 1], one per slice of ``target``, in order.
        target: ``(Z, Y, X)`` targets in {0, 1, IGNORE} (IGNORE pixels are not scored).
        edge_band: width of the border band for ``edge_fg_iou`` / ``interior_fg_iou``.
        threshold: probability above which a pixel is foreground.
        min_size: remove predicted 3D components smaller than this many voxels (0 = off);
            the threshold sweep always uses the probabilities as they are.
        connectivity: 1, 2 or 3 (see :func:`emseg.postprocess.remove_small_components`).
        scores: accumulate into these scores (several volumes pooled: call once per volume
            with the same object; the result is that of everything scored so far).

    Returns:
        The metrics (:data:`METRIC_KEYS`, floats in [0, 1], and :data:`INTERVAL_KEYS`) and
        the pooled confusion counts.
    """
    scores = VolumeScores(edge_band, threshold) if scores is None else scores
    scores.blocks.new_volume()  # no interval block spans two volumes
    kept: list[np.ndarray] = []
    depth = 0
    for z, probs in enumerate(probabilities):
        if z >= len(target):
            raise ValueError(f"more probability slices than the {len(target)} target slices")
        if probs.shape != target.shape[1:]:
            raise ValueError(f"slice {z}: probabilities {probs.shape} vs target {target.shape}")
        scores.update_probs(probs, target[z])
        prediction = (probs > threshold).astype(np.uint8)
        if min_size > 0:
            kept.append(prediction)  # components span slices: filter the whole volume first
        else:
            scores.update_prediction(prediction, target[z])
        depth = z + 1
    if depth != len(target):
        raise ValueError(f"{depth} probability slices for {len(target)} target slices")
    if min_size > 0:
        filtered = remove_small_components(np.stack(kept), min_size, connectivity)
        for z in range(depth):
            scores.update_prediction(filtered[z], target[z])
    return scores.compute(), scores.counts()
