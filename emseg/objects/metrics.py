"""Instance metrics: predicted objects matched to ground-truth objects by IoU.

Both volumes are ``(Z, Y, X)`` integer labels (0 = background). From the overlaps of every
predicted object with every true one:

* at each IoU threshold ``t`` a prediction is a true positive if it matches a true object with
  IoU >= ``t`` (greedy in the order of the predictions' scores, each true object matched once,
  as COCO / MitoEM do; for ``t`` >= 0.5 the match is unique anyway);
* ``precision``, ``recall``, ``f1`` at IoU 0.5 and ``mean_matched_iou`` of those matches;
* ``ap`` in the MitoEM protocol (Wei et al. 2020, its ``mAP_3Dvolume`` tool built on the COCO
  API): predictions ranked by score, COCO's 101-point interpolated precision-recall area at each
  IoU of 0.50, 0.55, ... 0.95, averaged; ``ap50`` / ``ap75`` at 0.5 / 0.75. The score of a
  prediction is its mean probability when probabilities are given (MitoEM's tool averages the
  model output inside the object), else its size in voxels;
* ``splits``: true objects of which two or more predictions each lie mostly (> half of the
  prediction's voxels) inside; ``merges``: predictions that hold most (> half) of two or more
  true objects.

Every count is pooled over the whole volume; an unlabelled mask (``ignore``) removes voxels
from both volumes before matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AP_THRESHOLDS", "instance_metrics", "overlaps"]

AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def overlaps(
    pred: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pred_ids, true_ids, intersections, pred_sizes, true_sizes)`` of two label volumes.

    ``pred_ids`` / ``true_ids`` / ``intersections`` list every overlapping pair once;
    ``pred_sizes[i]`` / ``true_sizes[j]`` are the voxel counts of ids ``i`` / ``j`` (index 0 =
    background).
    """
    pred = pred.ravel()
    truth = truth.ravel()
    pred_sizes = np.bincount(pred)
    true_sizes = np.bincount(truth)
    both = (pred > 0) & (truth > 0)
    p, t = pred[both].astype(np.int64), truth[both].astype(np.int64)
    key = p * (int(true_sizes.size) + 1) + t
    pairs, counts = np.unique(key, return_counts=True)
    return (
        pairs // (true_sizes.size + 1),
        pairs % (true_sizes.size + 1),
        counts,
        pred_sizes,
        true_sizes,
    )


def _match(
    order: np.ndarray,
    pairs: dict[int, list[tuple[float, int]]],
    threshold: float,
) -> dict[int, tuple[int, float]]:
    """Greedy COCO matching: each prediction (in ``order``) takes its best unmatched true
    object with IoU >= ``threshold``. Returns pred id -> (true id, IoU)."""
    taken: set[int] = set()
    matches: dict[int, tuple[int, float]] = {}
    for pid in order:
        best, best_iou = -1, threshold
        for iou, tid in pairs.get(int(pid), ()):
            if iou >= best_iou and tid not in taken and (best < 0 or iou > best_iou):
                best, best_iou = tid, iou
        if best >= 0:
            taken.add(best)
            matches[int(pid)] = (best, best_iou)
    return matches


def _average_precision(tp_in_order: np.ndarray, n_true: int) -> float:
    """COCO's 101-point interpolated area under precision-recall (predictions in score order)."""
    if n_true == 0:
        return float("nan")
    if len(tp_in_order) == 0:
        return 0.0
    tp = np.cumsum(tp_in_order)
    fp = np.cumsum(~tp_in_order)
    recall = tp / n_true
    precision = tp / np.maximum(tp + fp, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolated: max to the right
    index = np.searchsorted(recall, _RECALL_POINTS, side="left")
    values = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0)
    return float(values.mean())


def instance_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    probability: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    thresholds: Sequence[float] = AP_THRESHOLDS,
) -> dict[str, Any]:
    """Match ``pred`` to ``truth`` instances (both ``(Z, Y, X)`` ids, 0 = background).

    Args:
        pred: predicted instance labels.
        truth: true instance labels (e.g. connected components of a binary mask).
        probability: optional ``(Z, Y, X)`` probabilities; a prediction's score is its mean.
        ignore: optional ``(Z, Y, X)`` bool, True where voxels are unlabelled (left out).
        thresholds: IoU thresholds of the AP (MitoEM / COCO: 0.50:0.05:0.95).

    Returns:
        ``n_pred``, ``n_true``, ``tp``/``fp``/``fn``, ``precision``, ``recall``, ``f1`` (IoU
        0.5), ``mean_matched_iou``, ``ap``, ``ap50``, ``ap75``, ``ap_per_threshold``,
        ``splits``, ``merges``.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if ignore is not None:
        pred = np.where(ignore, 0, pred)
        truth = np.where(ignore, 0, truth)
    pids, tids, inter, pred_sizes, true_sizes = overlaps(pred, truth)
    pred_ids = np.flatnonzero(pred_sizes[1:]) + 1 if pred_sizes.size > 1 else np.zeros(0, int)
    true_ids = np.flatnonzero(true_sizes[1:]) + 1 if true_sizes.size > 1 else np.zeros(0, int)
    union = pred_sizes[pids] + true_sizes[tids] - inter
    ious = inter / np.maximum(union, 1)
    pairs: dict[int, list[tuple[float, int]]] = {}
    for pid, tid, iou in zip(pids.tolist(), tids.tolist(), ious.tolist(), strict=True):
        pairs.setdefault(pid, []).append((iou, tid))
    if probability is not None and len(pred_ids):
        sums = np.bincount(pred.ravel(), weights=probability.ravel(), minlength=pred_sizes.size)
        scores = sums[pred_ids] / pred_sizes[pred_ids]
        score_kind = "mean_probability"
    else:
        scores = pred_sizes[pred_ids].astype(float)
        score_kind = "voxels"
    order = pred_ids[np.argsort(-scores, kind="stable")]
    n_true, n_pred = int(len(true_ids)), int(len(pred_ids))
    per_threshold: dict[str, float] = {}
    at_half: dict[int, tuple[int, float]] = {}
    for threshold in thresholds:
        matches = _match(order, pairs, float(threshold))
        if abs(threshold - 0.5) < 1e-9:
            at_half = matches
        tp_in_order = np.array([int(pid) in matches for pid in order], dtype=bool)
        per_threshold[f"{threshold:.2f}"] = _average_precision(tp_in_order, n_true)
    if not any(abs(t - 0.5) < 1e-9 for t in thresholds):
        at_half = _match(order, pairs, 0.5)
    tp = len(at_half)
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    mostly_in_truth = inter > 0.5 * pred_sizes[pids]  # the prediction lies mostly in that truth
    mostly_in_pred = inter > 0.5 * true_sizes[tids]  # the truth lies mostly in that prediction
    splits = int((np.bincount(tids[mostly_in_truth], minlength=true_sizes.size) >= 2).sum())
    merges = int((np.bincount(pids[mostly_in_pred], minlength=pred_sizes.size) >= 2).sum())
    values = [v for v in per_threshold.values() if not np.isnan(v)]
    return {
        "n_pred": n_pred,
        "n_true": n_true,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_matched_iou": float(np.mean([iou for _, iou in at_half.values()])) if tp else 0.0,
        "ap": float(np.mean(values)) if values else float("nan"),
        "ap50": per_threshold.get("0.50", float("nan")),
        "ap75": per_threshold.get("0.75", float("nan")),
        "ap_per_threshold": per_threshold,
        "splits": splits,
        "merges": merges,
        "score": score_kind,
    }
