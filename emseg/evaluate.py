"""Whole-volume evaluation: ``python eval.py ckpt_path=<ckpt> [data=epfl|lucchipp]``.

Every slice of the labelled test volume is predicted by sliding-window inference (see
``conf/inference``) with the checkpoint's own normalisation, and the metrics are computed from
confusion counts pooled over the whole volume at ``threshold`` (never a mean of per-slice
values). Foreground IoU is also reported separately for an image-edge band of ``edge_band``
pixels along the four borders of every slice and for the interior, where tiles without
context used to make the model weaker. The threshold that would maximise foreground IoU on
this volume is reported for information only: it is fitted to the test data and is never
used for the headline numbers.

``split=val`` evaluates the checkpoint's validation hold-out (the last ``data.val_slices``
slices of its training volume) the same way: inference and post-processing settings are chosen
there, and the test volume is evaluated only for the chosen ones.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torchmetrics.classification import BinaryStatScores

from emseg.io.atomic import write_json_atomic
from emseg.data.volume import read_mask, read_pair
from emseg.errors import ConfigError, DataError
from emseg.hardware import describe_hardware
from emseg.inference import VolumePredictor, load_checkpoint
from emseg.inference.settings import apply_checkpoint_settings, command_line_overrides
from emseg.metrics import ThresholdSweep, binary_scores
from emseg.postprocess import (
    check_postprocess_args,
    median_filter_slices,
    remove_small_components,
)
from emseg.predict import SliceWriter, configure_threads, probabilities_as, progress_bar

__all__ = ["METRIC_KEYS", "VolumeScores", "edge_band_mask", "evaluate_volume", "run"]

log = logging.getLogger(__name__)

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
    """

    REGIONS = ("all", "edge", "interior")

    def __init__(self, edge_band: int = 32, threshold: float = 0.5) -> None:
        if int(edge_band) < 0:
            raise ConfigError(f"edge_band must be >= 0 pixels, got {edge_band}")
        self.edge_band, self.threshold = int(edge_band), float(threshold)
        self.stats = {region: BinaryStatScores(validate_args=False) for region in self.REGIONS}
        self.sweep = ThresholdSweep()
        self._edge: torch.Tensor | None = None

    def _edge_mask(self, shape: tuple[int, int]) -> torch.Tensor:
        if self._edge is None or tuple(self._edge.shape) != shape:
            self._edge = torch.from_numpy(edge_band_mask(*shape, self.edge_band))
        return self._edge

    def update_probs(self, probs: np.ndarray, target: np.ndarray) -> None:
        """Add the threshold-sweep histogram of float ``(Y, X)`` probabilities."""
        self.sweep.update(torch.from_numpy(probs), torch.from_numpy(target))

    def update_prediction(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add the confusion counts of a binary ``(Y, X)`` prediction against ``target``."""
        pred = torch.from_numpy(np.ascontiguousarray(prediction > 0)).long()
        true = torch.from_numpy(np.ascontiguousarray(target > 0)).long()
        edge = self._edge_mask(tuple(pred.shape))
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

    def compute(self) -> dict[str, float]:
        """The metrics of :data:`METRIC_KEYS` (see :func:`emseg.metrics.binary_scores`)."""
        counts = self.counts()
        metrics = binary_scores(**counts["all"])
        metrics["edge_fg_iou"] = binary_scores(**counts["edge"])["fg_iou"]
        metrics["interior_fg_iou"] = binary_scores(**counts["interior"])["fg_iou"]
        thresholds, ious = self.sweep.compute()
        best = int(torch.argmax(ious))  # first maximum: the lowest best threshold
        metrics["best_threshold"] = float(thresholds[best])
        metrics["fg_iou_at_best_threshold"] = float(ious[best])
        return metrics


def evaluate_volume(
    probabilities: Iterable[np.ndarray],
    target: np.ndarray,
    *,
    edge_band: int = 32,
    threshold: float = 0.5,
    min_size: int = 0,
    connectivity: int = 1,
) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Score a stream of probability slices against a labelled volume.

    Args:
        probabilities: float ``(Y, X)`` slices in [0, 1], one per slice of ``target``, in order.
        target: ``(Z, Y, X)`` mask in {0, 1}.
        edge_band: width of the border band for ``edge_fg_iou`` / ``interior_fg_iou``.
        threshold: probability above which a pixel is foreground.
        min_size: remove predicted 3D components smaller than this many voxels (0 = off);
            the threshold sweep always uses the probabilities as they are.
        connectivity: 1, 2 or 3 (see :func:`emseg.postprocess.remove_small_components`).

    Returns:
        The metrics (:data:`METRIC_KEYS`, floats in [0, 1]) and the pooled confusion counts.
    """
    scores = VolumeScores(edge_band, threshold)
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


def _data_overridden() -> bool:
    """Whether the command line set ``data=...`` or ``data.*`` (always true outside Hydra)."""
    if not HydraConfig.initialized():
        return True
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return any(key == "data" or key.startswith("data.") for key in keys)


def _test_paths(cfg: DictConfig, ckpt_config: dict[str, Any]) -> tuple[Path, Path]:
    """The checkpoint's own test volume unless ``data`` is overridden (or its files are gone)."""
    configured = Path(str(cfg.data.test_image)), Path(str(cfg.data.test_mask))
    if _data_overridden():
        return configured
    data = ckpt_config.get("data", {})
    trained = Path(str(data.get("test_image", ""))), Path(str(data.get("test_mask", "")))
    if all(str(p) not in ("", ".") and p.is_file() for p in trained):
        return trained
    log.warning(
        "the checkpoint's test volume %s / %s is not available; evaluating %s / %s",
        *trained,
        *configured,
    )
    return configured


def _print_table(metrics: dict[str, float], threshold: float, edge_band: int) -> None:
    table = Table(title=f"whole-volume metrics at threshold {threshold}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {
        "fg_iou": "fg_iou (metric of record)",
        "edge_fg_iou": f"edge_fg_iou ({edge_band}-px border band)",
        "interior_fg_iou": "interior_fg_iou",
        "best_threshold": "best_threshold (fitted on this volume; not used above)",
        "fg_iou_at_best_threshold": "fg_iou_at_best_threshold (optimistic)",
    }
    for key in METRIC_KEYS:
        table.add_row(labels.get(key, key), f"{metrics[key]:.4f}")
    Console().print(table)


def _with_writer(probs: Iterator[np.ndarray], writer: SliceWriter | None) -> Iterator[np.ndarray]:
    for prob in probs:
        if writer is not None:
            writer.write(probabilities_as(prob, "uint8"))
        yield prob


def _extra_targets(
    extra_masks: Any, split: str, mask: np.ndarray, limit: int | None
) -> dict[str, np.ndarray]:
    """The label volumes of ``extra_masks`` (name -> mask path), checked against ``mask``."""
    if not extra_masks:
        return {}
    if split != "test":
        raise ConfigError("extra_masks label the test volume: they need split=test")
    targets = {}
    for name, path in dict(extra_masks).items():
        target = read_mask(str(path))
        target = target if limit is None else target[: int(limit)]
        if target.shape != mask.shape:
            raise DataError(
                f"extra_masks.{name}: {path} has shape {target.shape} but the test mask has "
                f"{mask.shape}; they must label the same volume"
            )
        targets[str(name)] = target
    return targets


def _scored_against(
    probs: Iterator[np.ndarray], scores: dict[str, VolumeScores], targets: dict[str, np.ndarray]
) -> Iterator[np.ndarray]:
    """Pass the probability slices on, scoring each against every extra target on the way."""
    for z, prob in enumerate(probs):
        for name, score in scores.items():
            score.update_probs(prob, targets[name][z])
            score.update_prediction(prob > score.threshold, targets[name][z])
        yield prob


def _validation_block(ckpt_config: dict[str, Any]) -> tuple[Path, Path, int]:
    """The checkpoint's training image / mask and the first slice of its validation hold-out."""
    data = ckpt_config.get("data", {})
    try:
        paths = Path(str(data["train_image"])), Path(str(data["train_mask"]))
        val_slices = int(data["val_slices"])
    except KeyError as err:
        raise ConfigError(f"split=val: the checkpoint's config has no data.{err.args[0]}") from err
    if val_slices <= 0:
        raise ConfigError("split=val: the checkpoint was trained without a validation hold-out")
    return *paths, val_slices


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on the whole test volume and write ``metrics.json``.

    Args:
        cfg: the composed ``conf/eval.yaml``.

    Returns:
        The metrics (:data:`METRIC_KEYS`).
    """
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    configure_threads(cfg.get("torch_threads"))
    post = cfg.postprocess
    check_postprocess_args(post.median_size, post.min_size, post.connectivity)
    threshold = float(cfg.threshold)
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    limit = cfg.get("limit_slices")
    if limit is not None and int(limit) <= 0:
        raise ConfigError(f"limit_slices must be positive (or null), got {limit}")

    split = str(cfg.get("split", "test"))
    if split not in ("test", "val"):
        raise ConfigError(f"split must be test or val, got {split}")

    checkpoint = load_checkpoint(cfg.ckpt_path)
    applied = apply_checkpoint_settings(cfg, checkpoint.config, command_line_overrides())
    check_postprocess_args(post.median_size, post.min_size, post.connectivity)
    # Extra slices read before the evaluated block, so that 2.5D context at its first slice is
    # the real neighbour (the validation block follows the training slices).
    lead = 0
    if split == "val":
        image_path, mask_path, val_slices = _validation_block(checkpoint.config)
        image, mask = read_pair(image_path, mask_path)
        first = len(image) - val_slices
        lead = min(first, checkpoint.preprocessing.context)
        image, mask = image[first - lead :], mask[first:]
    else:
        image_path, mask_path = _test_paths(cfg, checkpoint.config)
        image, mask = read_pair(image_path, mask_path)
    if limit is not None:
        image, mask = image[: lead + int(limit)], mask[: int(limit)]
    extra_targets = _extra_targets(cfg.get("extra_masks"), split, mask, limit)
    if extra_targets and int(post.min_size) > 0:
        raise ConfigError("extra_masks cannot be combined with postprocess.min_size > 0")
    extra_scores = {name: VolumeScores(int(cfg.edge_band), threshold) for name in extra_targets}
    predictor: VolumePredictor = instantiate(cfg.inference)(
        model=checkpoint.net, preprocessing=checkpoint.preprocessing
    )
    log.info(
        "evaluating %s on %s (%d slices) with %s",
        checkpoint.path,
        image_path,
        len(mask),
        predictor.describe(),
    )
    writer = None
    if cfg.get("save_predictions"):
        writer = SliceWriter(output_dir / "predictions.tif", mask.shape, np.uint8)
    try:
        probs = itertools.islice(predictor.predict(image), lead, None)
        probs = median_filter_slices(probs, int(post.median_size), torch.get_num_threads())
        probs = _scored_against(probs, extra_scores, extra_targets)
        probs = progress_bar(
            _with_writer(probs, writer), len(mask), "evaluate", bool(cfg.get("progress", True))
        )
        metrics, counts = evaluate_volume(
            probs,
            mask,
            edge_band=int(cfg.edge_band),
            threshold=threshold,
            min_size=int(post.min_size),
            connectivity=int(post.connectivity),
        )
        if writer is not None:
            writer.commit()
    finally:
        if writer is not None:
            writer.abort()
    seconds = time.perf_counter() - start
    summary = {
        "metrics": metrics,
        "threshold": threshold,
        "edge_band": int(cfg.edge_band),
        "split": split,
        "slices": int(len(mask)),
        "counts": counts,
        "checkpoint": str(checkpoint.path),
        "test_image": str(image_path),
        "test_mask": str(mask_path),
        "inference": predictor.describe(),
        "postprocess": {k: int(post[k]) for k in ("median_size", "min_size", "connectivity")},
        "checkpoint_settings": applied,
        "extra_masks": {
            name: {
                "test_mask": str(cfg.extra_masks[name]),
                "metrics": score.compute(),
                "counts": score.counts(),
            }
            for name, score in extra_scores.items()
        },
        "seconds": seconds,
        "hardware": describe_hardware(),
    }
    write_json_atomic(output_dir / "metrics.json", summary)
    _print_table(metrics, threshold, int(cfg.edge_band))
    for name, extra in summary["extra_masks"].items():
        log.info("fg_iou against extra_masks.%s: %.4f", name, extra["metrics"]["fg_iou"])
    log.info("wrote %s (%.1f s)", output_dir / "metrics.json", seconds)
    return metrics
