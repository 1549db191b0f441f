"""The metrics are configured with mitochondria as the positive class; hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from emseg.metrics import segmentation_metrics


def compute(probs, target) -> dict[str, float]:
    metrics = segmentation_metrics()
    metrics.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(target))
    return {k: float(v) for k, v in metrics.compute().items()}


def test_perfect_prediction_scores_one():
    target = [[0, 1, 1, 0], [0, 0, 1, 0]]
    result = compute([[float(t) for t in row] for row in target], target)
    assert result == pytest.approx({"acc": 1.0, "fg_iou": 1.0, "mean_iou": 1.0, "dice": 1.0})


def test_hand_computed_case():
    # 8 pixels: TP=2, FP=1, FN=1, TN=4
    probs = [0.9, 0.8, 0.7, 0.2, 0.1, 0.0, 0.3, 0.4]
    target = [1, 1, 0, 1, 0, 0, 0, 0]
    result = compute(probs, target)
    assert result["acc"] == pytest.approx(6 / 8)
    assert result["fg_iou"] == pytest.approx(2 / 4)  # TP / (TP + FP + FN)
    assert result["dice"] == pytest.approx(4 / 6)  # 2TP / (2TP + FP + FN)
    assert result["mean_iou"] == pytest.approx((2 / 4 + 4 / 6) / 2)  # bg IoU = TN/(TN+FP+FN)


def test_all_background_prediction_has_high_accuracy_but_zero_fg_iou():
    target = [1] + [0] * 19
    result = compute([0.0] * 20, target)
    assert result["acc"] == pytest.approx(0.95)
    assert result["fg_iou"] == 0.0
    assert result["mean_iou"] == pytest.approx(0.95 / 2)


def test_metrics_accumulate_over_batches_not_average():
    metrics = segmentation_metrics()
    metrics.update(torch.tensor([1.0, 1.0]), torch.tensor([1, 1]))  # batch IoU 1
    metrics.update(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 1, 1, 1]))  # batch IoU 0
    # pooled: TP=2, FP=1, FN=3 -> 2/6 (a mean of batch values would give 0.5)
    assert float(metrics.compute()["fg_iou"]) == pytest.approx(2 / 6)
