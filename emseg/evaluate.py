"""Whole-volume evaluation: ``python eval.py ckpt_path=<ckpt | run dir> [data=epfl|lucchipp]``.

Every slice of the labelled test volume is predicted by the inference pipeline
(:func:`emseg.inference.build_pipeline`: the checkpoint's own normalisation, ``conf/inference``
and ``conf/postprocess`` beneath the checkpoint's chosen settings) and scored by
:func:`emseg.volume_scores.evaluate_volume` from confusion counts pooled over the volume.

``split=val`` evaluates the checkpoint's validation hold-out (the last ``data.val_slices``
slices of its training volume) the same way: inference and post-processing settings are chosen
there, and the test volume is evaluated only for the chosen ones. ``resume=true`` returns an
existing ``metrics.json`` of the run directory without work (re-launched sweeps).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from emseg.cli import progress_bar
from emseg.errors import ConfigError, DataError
from emseg.hardware import describe_hardware
from emseg.inference import InferencePipeline, build_pipeline
from emseg.io import VolumeSink, create_sink, open_volume, read_mask, write_json_atomic
from emseg.io.encoding import probabilities_as
from emseg.io.formats import parse_volume
from emseg.io.source import ZRange
from emseg.run_dir import finished_metrics
from emseg.volume_scores import METRIC_KEYS, VolumeScores, evaluate_volume

__all__ = ["METRIC_KEYS", "run"]

log = logging.getLogger(__name__)


@dataclass
class EvalVolume:
    """What is scored: a lazy image z-range (with ``lead`` 2.5D context slices before the
    scored ones) and the labels of the scored slices, ``(Z, Y, X)`` in {0, 1}."""

    image: ZRange
    mask: np.ndarray
    lead: int
    image_path: Path
    mask_path: Path


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
    trained = Path(str(data.get("test_image") or "")), Path(str(data.get("test_mask") or ""))
    if all(str(p) not in ("", ".") and parse_volume(p)[1].exists() for p in trained):
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


def _check_split(cfg: DictConfig) -> tuple[str, int | None]:
    split = str(cfg.get("split", "test"))
    if split not in ("test", "val"):
        raise ConfigError(f"split must be test or val, got {split}")
    limit = cfg.get("limit_slices")
    if limit is not None and int(limit) <= 0:
        raise ConfigError(f"limit_slices must be positive (or null), got {limit}")
    return split, None if limit is None else int(limit)


def _eval_volume(
    cfg: DictConfig,
    pipeline: InferencePipeline,
    split: str,
    limit: int | None,
    stack: contextlib.ExitStack,
) -> EvalVolume:
    """The image (opened lazily, closed with ``stack``) and labels that ``split`` scores.

    For ``split=val`` the image starts up to ``context`` slices before the hold-out, so that
    2.5D context at its first slice is the real neighbour (the hold-out follows the training
    slices).
    """
    config = pipeline.checkpoint.config
    if split == "val":
        image_path, mask_path, val_slices = _validation_block(config)
    else:
        image_path, mask_path = _test_paths(cfg, config)
    source = stack.enter_context(open_volume(image_path))
    mask = read_mask(mask_path)
    if source.shape != mask.shape:
        raise DataError(
            f"image {image_path} has shape {source.shape} but mask {mask_path} has shape "
            f"{mask.shape}; they must match"
        )
    first = len(source) - val_slices if split == "val" else 0
    lead = min(first, pipeline.checkpoint.preprocessing.context)
    stop = len(source) if limit is None else min(len(source), first + limit)
    return EvalVolume(
        source.z_range(first - lead, stop), mask[first:stop], lead, image_path, mask_path
    )


def _extra_targets(extra_masks: Any, split: str, volume: EvalVolume) -> dict[str, np.ndarray]:
    """The label volumes of ``extra_masks`` (name -> mask path), checked against the scored mask."""
    if not extra_masks:
        return {}
    if split != "test":
        raise ConfigError("extra_masks label the test volume: they need split=test")
    targets = {}
    for name, path in dict(extra_masks).items():
        target = read_mask(str(path))[: len(volume.mask)]
        if target.shape != volume.mask.shape:
            raise DataError(
                f"extra_masks.{name}: {path} has shape {target.shape} but the test mask has "
                f"{volume.mask.shape}; they must label the same volume"
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


def _written(probs: Iterator[np.ndarray], sink: VolumeSink | None) -> Iterator[np.ndarray]:
    for prob in probs:
        if sink is not None:
            sink.write(probabilities_as(prob, "uint8"))
        yield prob


def _score(
    cfg: DictConfig, pipeline: InferencePipeline, volume: EvalVolume, output_dir: Path
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Predict and score the volume (and the extra masks); optionally save the probabilities."""
    split = str(cfg.get("split", "test"))
    targets = _extra_targets(cfg.get("extra_masks"), split, volume)
    post, band = pipeline.postprocess, int(cfg.edge_band)
    if targets and int(post.min_size) > 0:
        raise ConfigError("extra_masks cannot be combined with postprocess.min_size > 0")
    extra = {name: VolumeScores(band, pipeline.threshold) for name in targets}
    with contextlib.ExitStack() as stack:
        sink = None
        if cfg.get("save_predictions"):
            path = output_dir / "predictions.tif"
            sink = stack.enter_context(create_sink(path, volume.mask.shape, np.uint8))
        probs = _scored_against(pipeline.probabilities(volume.image, volume.lead), extra, targets)
        show = bool(cfg.get("progress", True))
        probs = progress_bar(_written(probs, sink), len(volume.mask), "evaluate", show)
        metrics, counts = evaluate_volume(
            probs,
            volume.mask,
            edge_band=band,
            threshold=pipeline.threshold,
            min_size=int(post.min_size),
            connectivity=int(post.connectivity),
        )
        if sink is not None:
            sink.commit()
    extras = {
        name: {
            "test_mask": str(cfg.extra_masks[name]),
            "metrics": score.compute(),
            "counts": score.counts(),
        }
        for name, score in extra.items()
    }
    return metrics, counts, extras


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
    finished = finished_metrics(output_dir, bool(cfg.get("resume")))
    if finished is not None:
        return finished
    split, limit = _check_split(cfg)
    pipeline = build_pipeline(cfg)
    with contextlib.ExitStack() as stack:
        volume = _eval_volume(cfg, pipeline, split, limit, stack)
        log.info(
            "evaluating %s on %s (%d slices) with %s",
            pipeline.checkpoint.path,
            volume.image_path,
            len(volume.mask),
            pipeline.predictor.describe(),
        )
        metrics, counts, extras = _score(cfg, pipeline, volume, output_dir)
    described = pipeline.describe()
    summary = {
        "metrics": metrics,
        "threshold": pipeline.threshold,
        "edge_band": int(cfg.edge_band),
        "split": split,
        "slices": int(len(volume.mask)),
        "counts": counts,
        "checkpoint": described["checkpoint"],
        "test_image": str(volume.image_path),
        "test_mask": str(volume.mask_path),
        "inference": described["inference"],
        "postprocess": described["postprocess"],
        "checkpoint_settings": described["checkpoint_settings"],
        "extra_masks": extras,
        "seconds": time.perf_counter() - start,
        "hardware": describe_hardware(),
    }
    done = output_dir / "metrics.json"
    write_json_atomic(done, summary)
    _print_table(metrics, pipeline.threshold, int(cfg.edge_band))
    for name, extra in extras.items():
        log.info("fg_iou against extra_masks.%s: %.4f", name, extra["metrics"]["fg_iou"])
    log.info("wrote %s (%.1f s)", done, summary["seconds"])
    return metrics
