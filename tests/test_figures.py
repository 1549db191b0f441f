"""The report figures' helpers: one error overlay and per-slice IoU from confusion counts."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.report.figures import ERROR_COLOURS, error_rgb, per_slice_fg_iou


def test_error_overlay_colours_tp_fp_fn_and_leaves_tn_grey():
    image = np.array([[0, 0], [0, 255]], np.uint8)
    pred = np.array([[True, True], [False, False]])
    truth = np.array([[True, False], [True, False]])
    rgb = error_rgb(image, pred, truth)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.float32
    assert rgb[0, 0] == pytest.approx(0.5 * np.array(ERROR_COLOURS["tp"]))
    assert rgb[0, 1] == pytest.approx(0.5 * np.array(ERROR_COLOURS["fp"]))
    assert rgb[1, 0] == pytest.approx(0.5 * np.array(ERROR_COLOURS["fn"]))
    assert rgb[1, 1] == pytest.approx([1.0, 1.0, 1.0])  # true negative: the scaled image


def test_per_slice_fg_iou_from_confusion_counts():
    mask = np.zeros((3, 2, 2), np.uint8)
    probs = np.zeros((3, 2, 2), np.float32)
    mask[0, 0, :] = 255  # slice 0: TP 1, FN 1, FP 1 -> 1/3
    probs[0, 0, 0] = probs[0, 1, 1] = 0.9
    probs[1, 0, 0] = 0.9  # slice 1: only a false positive -> 0
    # slice 2: no foreground anywhere -> 1 (the perfect-prediction limit)
    assert per_slice_fg_iou(probs, mask) == pytest.approx([1 / 3, 0.0, 1.0])
    as_uint8 = (probs * 255).astype(np.uint8)
    assert per_slice_fg_iou(as_uint8, mask) == pytest.approx([1 / 3, 0.0, 1.0])
    assert per_slice_fg_iou(probs, mask, threshold=0.95) == pytest.approx([0.0, 1.0, 1.0])
