"""Block-bootstrap intervals of the pooled fg IoU (emseg.intervals) and their place in the
whole-volume scores."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.errors import ConfigError
from emseg.intervals import (
    MIN_BLOCKS,
    BlockCounts,
    fg_iou_difference_interval,
    fg_iou_interval,
    tile_counts,
)
from emseg.volume_scores import VolumeScores, evaluate_volume


def _iou(counts: np.ndarray) -> float:
    tp, fp, fn = counts.sum(axis=0)
    return tp / (tp + fp + fn)


def _blocks(rng: np.random.Generator, n: int, recall: float = 0.9) -> np.ndarray:
    """``(n, 3)`` counts of blocks whose foreground and errors vary from block to block."""
    fg = rng.integers(200, 2000, n)
    tp = rng.binomial(fg, recall)
    return np.stack([tp, rng.binomial(fg, 0.08), fg - tp], axis=1)


def test_tile_counts_split_a_slice_into_tiles_that_add_up():
    rng = np.random.default_rng(0)
    pred, true = rng.random((2, 50, 70)) < 0.3
    labelled = rng.random((50, 70)) < 0.9
    tiles = tile_counts(pred, true, labelled, (32, 32))
    assert tiles.shape == (2 * 3, 3)  # 50 -> 32 + 18 rows, 70 -> 32 + 32 + 6 columns
    p, t = pred & labelled, true & labelled
    expected = [(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]
    assert tiles.sum(axis=0).tolist() == expected
    corner = pred[32:, 64:] & true[32:, 64:] & labelled[32:, 64:]
    assert tiles[-1, 0] == corner.sum()


def test_block_counts_group_slices_in_z_and_never_across_volumes():
    blocks = BlockCounts((4, 16, 16))
    ones = np.ones((16, 32), bool)
    for _ in range(6):  # 4 + 2 slices: two block rows of 2 tiles each
        blocks.add(ones, ones, ones)
    assert blocks.counts()[:, 0].tolist() == [4 * 256, 4 * 256, 2 * 256, 2 * 256]
    blocks.new_volume()
    blocks.add(ones, ones, ones)  # a new volume: a new row, though the last one had room
    assert blocks.counts()[:, 0].tolist()[-2:] == [256, 256]
    with pytest.raises(ConfigError, match="3 positive sizes"):
        BlockCounts((0, 16, 16))


def test_the_interval_holds_the_score_narrows_with_more_blocks_and_is_reproducible():
    rng = np.random.default_rng(1)
    few, many = _blocks(rng, 16), _blocks(rng, 400)
    a, b = fg_iou_interval(few), fg_iou_interval(many)
    assert a["low"] < _iou(few) < a["high"] and b["low"] < _iou(many) < b["high"]
    assert b["high"] - b["low"] < (a["high"] - a["low"]) / 2  # ~1/sqrt(25) as wide
    assert fg_iou_interval(few) == a and a["blocks"] == 16 and a["confidence"] == 0.95
    assert fg_iou_interval(few[: MIN_BLOCKS - 1]) is None  # too few blocks to say
    assert fg_iou_interval(np.zeros((20, 3))) is None  # no foreground anywhere


def test_the_interval_covers_the_true_score_about_as_often_as_it_says():
    # volumes of 40 blocks from one population whose pooled IoU is known (the expectation of
    # a very large sample); a 90 % interval should hold it in ~90 % of the volumes
    rng = np.random.default_rng(2)
    truth = _iou(_blocks(rng, 400_000))
    hits = [
        (i := fg_iou_interval(_blocks(rng, 40), confidence=0.9, n_resamples=999))["low"]
        <= truth
        <= i["high"]
        for _ in range(60)
    ]
    assert 0.75 <= np.mean(hits) <= 1.0, np.mean(hits)


def test_paired_differences_cancel_what_two_predictions_share():
    rng = np.random.default_rng(3)
    a = _blocks(rng, 60)
    same = fg_iou_difference_interval(a, a)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0
    better = a.copy()
    better[:, 1] = (a[:, 1] * 0.95).astype(int)  # 5 % fewer false positives in every block
    d = fg_iou_difference_interval(better, a)
    assert d["difference"] == pytest.approx(_iou(better) - _iou(a))
    assert 0 < d["low"] <= d["difference"] <= d["high"]
    # unpaired, the two intervals overlap: only the pairing resolves this gain
    assert fg_iou_interval(better)["low"] < fg_iou_interval(a)["high"]
    with pytest.raises(ConfigError, match="paired blocks differ"):
        fg_iou_difference_interval(a, a[:-1])


def test_whole_volume_scores_carry_the_interval():
    rng = np.random.default_rng(4)
    target = (rng.random((32, 64, 64)) < 0.2).astype(np.uint8)
    probs = np.where(rng.random(target.shape) < 0.85, target, 1 - target).astype(np.float32)
    scores = VolumeScores(edge_band=4, interval_block=(4, 32, 32))
    metrics, _ = evaluate_volume(iter(probs), target, scores=scores)
    assert scores.interval()["blocks"] == 8 * 4
    assert metrics["fg_iou_ci_low"] < metrics["fg_iou"] < metrics["fg_iou_ci_high"]
    assert metrics["fg_iou_ci_high"] - metrics["fg_iou_ci_low"] < 0.05
