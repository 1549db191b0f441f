"""Is one segmentation better than another on the same volume? ``compare.py a=<run> b=<run>``.

Two ``eval.py`` records (``metrics.json``, or the run directory that holds it) of the same
labelled volume: ``fg_iou(a) - fg_iou(b)`` with its paired block-bootstrap interval
(:func:`emseg.intervals.fg_iou_difference_interval`): both are resampled on the same 3D blocks,
so what the two share (hard regions, label noise) cancels and a gain far smaller than either
score's own interval can still be resolved. The answer says whether the interval excludes 0.
Any two records: two checkpoints, two inference settings, emseg against a peer's prediction
scored by ``eval.py prediction=``; on the validation hold-out (``split=val``) while choosing,
on the test volume only to report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from emseg.errors import ConfigError, DataError
from emseg.intervals import fg_iou_difference_interval
from emseg.io.atomic import write_json_atomic

__all__ = ["compare_records", "load_record", "run"]

log = logging.getLogger(__name__)

# What must agree for two records to score the same voxels.
_SAME = ("split", "slices", "test_mask")


def load_record(path: Path | str, name: str) -> dict[str, Any]:
    """The eval.py record at ``path`` (``metrics.json`` or a directory holding one).

    Raises:
        DataError: no such file, not JSON, or a record without block counts (written before
            they were kept, or not by eval.py).
    """
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{name}: no eval.py record at {file}")
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{name}: {file} is not a readable metrics.json ({err})") from err
    blocks = record.get("fg_iou_blocks") if isinstance(record, dict) else None
    if not isinstance(blocks, dict) or "tp_fp_fn" not in blocks:
        raise DataError(
            f"{name}: {file} holds no block counts (fg_iou_blocks): score it again with this "
            "eval.py"
        )
    return {**record, "path": str(file)}


def compare_records(
    a: dict[str, Any], b: dict[str, Any], confidence: float = 0.95, n_resamples: int = 2000
) -> dict[str, Any]:
    """``fg_iou(a) - fg_iou(b)`` with its paired interval (records of :func:`load_record`).

    Raises:
        ConfigError: the records did not score the same voxels against the same labels
            (split, slices, labels, block size, or the foreground of a block differs).
    """
    for key in _SAME:
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"a and b scored different volumes: {key} {a.get(key)!r} vs {b.get(key)!r}"
            )
    ba, bb = a["fg_iou_blocks"], b["fg_iou_blocks"]
    if ba.get("block_zyx") != bb.get("block_zyx"):
        raise ConfigError(
            f"a and b used other blocks: {ba.get('block_zyx')} vs {bb.get('block_zyx')}"
        )
    counts_a = np.asarray(ba["tp_fp_fn"], np.int64).reshape(-1, 3)
    counts_b = np.asarray(bb["tp_fp_fn"], np.int64).reshape(-1, 3)
    if counts_a.shape != counts_b.shape:
        raise ConfigError(f"a and b have {len(counts_a)} and {len(counts_b)} blocks")
    # tp + fn is the labelled foreground of a block: equal when the labels are the same
    differs = np.flatnonzero(counts_a[:, 0] + counts_a[:, 2] != counts_b[:, 0] + counts_b[:, 2])
    if differs.size:
        raise ConfigError(
            f"a and b were scored against different labels: the foreground of block "
            f"{int(differs[0])} differs ({differs.size} of {len(counts_a)} blocks)"
        )
    gain = fg_iou_difference_interval(counts_a, counts_b, confidence, n_resamples)
    result: dict[str, Any] = {
        "a": a["path"],
        "b": b["path"],
        "fg_iou_a": a["metrics"]["fg_iou"],
        "fg_iou_b": b["metrics"]["fg_iou"],
        "block_zyx": ba.get("block_zyx"),
        "blocks": len(counts_a),
    }
    if gain is None:
        result.update(difference=None, resolved=False, note="too few blocks for an interval")
        return result
    result.update(gain)
    result["resolved"] = bool(gain["low"] > 0 or gain["high"] < 0)
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """``compare.py``: compare ``cfg.a`` with ``cfg.b``, log it, write ``comparison.json``."""
    if not 0 < float(cfg.confidence) < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {cfg.confidence}")
    if int(cfg.n_resamples) < 100:
        raise ConfigError(f"n_resamples must be >= 100, got {cfg.n_resamples}")
    a, b = load_record(cfg.a, "a"), load_record(cfg.b, "b")
    result = compare_records(a, b, float(cfg.confidence), int(cfg.n_resamples))
    out = Path(cfg.paths.output_dir) / "comparison.json"
    write_json_atomic(out, result)
    if result["difference"] is None:
        log.info("a %.4f, b %.4f: %s", result["fg_iou_a"], result["fg_iou_b"], result["note"])
    else:
        log.info(
            "fg IoU a %.4f - b %.4f = %+.4f, %g %% interval %+.4f to %+.4f (%d blocks): %s",
            result["fg_iou_a"],
            result["fg_iou_b"],
            result["difference"],
            100 * result["confidence"],
            result["low"],
            result["high"],
            result["blocks"],
            "resolved" if result["resolved"] else "not resolved: the volume cannot tell them apart",
        )
    log.info("wrote %s", out)
    return result
