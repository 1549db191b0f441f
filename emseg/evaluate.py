"""Whole-volume evaluation: ``python eval.py ckpt_path=<ckpt | run dir> [data=epfl|lucchipp]``.

Every slice of the labelled test volume is predicted by the inference pipeline
(:func:`emseg.inference.build_pipeline`: the checkpoint's own normalisation, ``conf/inference``
and ``conf/postprocess`` beneath the checkpoint's chosen settings) and scored by
:func:`emseg.volume_scores.evaluate_volume` from confusion counts pooled over the volume.

``split=val`` evaluates the checkpoint's validation hold-out (the last ``data.val_slices``
slices of its training volume) the same way: inference and post-processing settings are chosen
there, and the test volume is evaluated only for the chosen ones. ``resume=true`` returns an
existing ``metrics.json`` of the run directory without work (re-launched sweeps).

``prediction=<volume>`` scores an existing prediction instead (no checkpoint, no inference: a
blockwise ``out.zarr`` store of predict.py, one of its arrays, or any probability volume)
against ``data.test_mask``, streamed block by block through the same scores
(:func:`emseg.prediction_scores.score_prediction`).
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
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from emseg.cli import progress_bar
from emseg.data.labels import to_targets
from emseg.data.volumes import (
    Box,
    VolumeEntry,
    parse_entries,
    read_targets,
    split_regions,
    training_entries,
)
from emseg.errors import ConfigError, DataError
from emseg.hardware import describe_hardware
from emseg.inference import InferencePipeline, build_pipeline, check_threshold
from emseg.io import VolumeSink, create_sink, open_volume, read_mask, write_json_atomic
from emseg.io.encoding import probabilities_as
from emseg.io.formats import parse_volume
from emseg.io.source import VolumeSource, ZRange
from emseg.prediction_scores import score_prediction
from emseg.run_dir import finished_metrics
from emseg.volume_scores import INTERVAL_KEYS, METRIC_KEYS, VolumeScores, evaluate_volume

__all__ = ["METRIC_KEYS", "EvalVolume", "run", "validation_volumes"]

log = logging.getLogger(__name__)


@dataclass
class EvalVolume:
    """What is scored: lazy image slices (with ``lead`` 2.5D context slices before the
    scored ones) and the targets of the scored slices, ``(Z, Y, X)`` in {0, 1, IGNORE}."""

    image: ZRange | CroppedSlices
    mask: np.ndarray
    lead: int
    image_path: Path
    mask_path: Path


class CroppedSlices:
    """Slices ``start .. stop - 1`` of a source cut to ``ys`` / ``xs`` (a labels crop), lazily."""

    def __init__(self, source: VolumeSource, start: int, stop: int, ys: slice, xs: slice) -> None:
        self.source, self.start, self.stop, self.ys, self.xs = source, start, stop, ys, xs
        self.path, self.dtype = source.path, source.dtype
        self.shape = (stop - start, ys.stop - ys.start, xs.stop - xs.start)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, z: int) -> np.ndarray:
        if not 0 <= z < len(self):
            raise IndexError(f"slice {z} out of range for {len(self)} slices")
        return self.source.read(self.start + z, self.ys, self.xs)


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


def _print_table(metrics: dict[str, float | None], threshold: float | None, edge_band: int) -> None:
    at = "its own threshold" if threshold is None else f"threshold {threshold}"
    table = Table(title=f"whole-volume metrics at {at}")
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
        value = metrics[key]
        shown = "n/a (a mask: no probabilities)" if value is None else f"{value:.4f}"
        table.add_row(labels.get(key, key), shown)
        if key == "fg_iou":
            low, high = (metrics.get(k) for k in INTERVAL_KEYS)
            shown = "n/a (too few blocks)" if low is None else f"{low:.4f} - {high:.4f}"
            table.add_row("fg_iou 95 % interval (bootstrap over 3D blocks)", shown)
    Console().print(table)


def _validation_boxes(ckpt_config: dict[str, Any]) -> list[tuple[VolumeEntry, Box]]:
    """The validation boxes of the checkpoint's run: its held-out slices or val_volumes."""
    data = ckpt_config.get("data", {})
    try:
        entries = training_entries(
            data.get("train_image"), data.get("train_mask"), data.get("volumes")
        )
        val_entries = data.get("val_volumes")
        if val_entries is not None:
            val_entries = parse_entries(val_entries, "data.val_volumes")
        val_slices = data["val_slices"] if val_entries is None else 1
    except (KeyError, ConfigError) as err:
        raise ConfigError(f"split=val: the checkpoint's data config does not say ({err})") from err
    if not val_entries and (not isinstance(val_slices, int | float) or val_slices <= 0):
        raise ConfigError("split=val: the checkpoint was trained without a validation hold-out")
    return split_regions(entries, val_entries, val_slices)[1]


def _check_split(cfg: DictConfig) -> tuple[str, int | None]:
    split = str(cfg.get("split", "test"))
    if split not in ("test", "val"):
        raise ConfigError(f"split must be test or val, got {split}")
    limit = cfg.get("limit_slices")
    if limit is not None and int(limit) <= 0:
        raise ConfigError(f"limit_slices must be positive (or null), got {limit}")
    return split, None if limit is None else int(limit)


def _label_settings(cfg: DictConfig, ckpt_config: dict[str, Any]) -> tuple[str, int | None]:
    """``(data.labels, data.unlabelled)``: the command line's, else the checkpoint's run's."""
    data = ckpt_config.get("data", {})
    given = cfg.get("data") or {}
    convention = given.get("labels") if _data_overridden() else None
    unlabelled = given.get("unlabelled") if _data_overridden() else None
    return (
        str(convention or data.get("labels") or "auto"),
        unlabelled if unlabelled is not None else data.get("unlabelled"),
    )


def _eval_volumes(
    cfg: DictConfig,
    pipeline: InferencePipeline,
    split: str,
    limit: int | None,
    stack: contextlib.ExitStack,
) -> list[EvalVolume]:
    """The images (opened lazily, closed with ``stack``) and targets that ``split`` scores.

    ``split=test`` is the one test volume; ``split=val`` every validation box of the run (the
    held-out slices of each training volume, or its ``val_volumes``), each starting up to
    ``context`` slices before the box so that 2.5D context at its first slice is the real
    neighbour (the hold-out follows the training slices). ``limit`` caps the scored slices of
    each volume.
    """
    config = pipeline.checkpoint.config
    convention, unlabelled = _label_settings(cfg, config)
    context = pipeline.checkpoint.preprocessing.context
    if split == "test":
        image_path, mask_path = _test_paths(cfg, config)
        source = stack.enter_context(open_volume(image_path))
        mask = read_targets(str(mask_path), convention, unlabelled, source.shape, str(image_path))
        stop = len(source) if limit is None else min(len(source), limit)
        return [EvalVolume(source.z_range(0, stop), mask[:stop], 0, image_path, mask_path)]
    volumes = []
    for entry, box in _validation_boxes(config):
        source = stack.enter_context(open_volume(entry.image))
        (first, y0, x0), (stop, y1, x1) = box.start, box.stop
        if limit is not None:
            stop = min(stop, first + limit)
        lead = min(first, context)
        with open_volume(entry.labels, "labels") as labels:
            offset = entry.offset or (0, 0, 0)
            stored = labels.read(*Box((first, y0, x0), (stop, y1, x1)).slices(offset))
        mask = to_targets(stored, entry.labels, convention, unlabelled)
        if (y0, x0, y1, x1) == (0, 0, *source.shape[1:]):
            image = source.z_range(first - lead, stop)
        else:
            image = CroppedSlices(source, first - lead, stop, slice(y0, y1), slice(x0, x1))
        volumes.append(EvalVolume(image, mask, lead, Path(entry.image), Path(entry.labels)))
    return volumes


@contextlib.contextmanager
def validation_volumes(
    pipeline: InferencePipeline, limit: int | None = None
) -> Iterator[list[EvalVolume]]:
    """The checkpoint's validation hold-out exactly as ``split=val`` scores it (for the settings
    search after training, :mod:`emseg.settings_search`): its volumes, opened lazily and closed
    on exit, at most ``limit`` scored slices each."""
    cfg = OmegaConf.create({"split": "val", "limit_slices": limit})
    with contextlib.ExitStack() as stack:
        yield _eval_volumes(cfg, pipeline, "val", limit, stack)


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


def _collected(probs: Iterator[np.ndarray], into: np.ndarray | None) -> Iterator[np.ndarray]:
    """Pass the probability slices on, keeping each in ``into`` (instances=true) on the way."""
    for z, prob in enumerate(probs):
        if into is not None:
            into[z] = prob
        yield prob


def _instances(
    cfg: DictConfig, pipeline: InferencePipeline, volume: EvalVolume, probability: np.ndarray
) -> dict[str, Any]:
    """``instances=true``: instance metrics of the volume (emseg.objects), after its pixels."""
    from emseg.objects.run import instance_settings, score_instances

    post = pipeline.postprocess
    return score_instances(
        probability,
        volume.mask,
        pipeline.threshold,
        instance_settings(cfg),
        int(post.min_size),
        int(post.connectivity),
        getattr(getattr(volume.image, "source", None), "voxel_size", None),
    )


def _written(probs: Iterator[np.ndarray], sink: VolumeSink | None) -> Iterator[np.ndarray]:
    for prob in probs:
        if sink is not None:
            sink.write(probabilities_as(prob, "uint8"))
        yield prob


def _score(
    cfg: DictConfig, pipeline: InferencePipeline, volumes: list[EvalVolume], output_dir: Path
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any], dict[str, Any] | None, dict]:
    """Predict and score the volumes, pooled (and the extra masks of the test volume);
    optionally save the probabilities and score instances (one volume only)."""
    split = str(cfg.get("split", "test"))
    targets = _extra_targets(cfg.get("extra_masks"), split, volumes[0])
    post, band = pipeline.postprocess, int(cfg.edge_band)
    if targets and int(post.min_size) > 0:
        raise ConfigError("extra_masks cannot be combined with postprocess.min_size > 0")
    if cfg.get("save_predictions") and len(volumes) > 1:
        raise ConfigError(
            f"save_predictions=true writes one volume, but split={split} scores {len(volumes)}"
        )
    instances = bool(cfg.get("instances", False))
    if instances and len(volumes) > 1:
        raise ConfigError(
            f"instances=true scores one volume, but split={split} scores {len(volumes)}"
        )
    instance_metrics = None
    extra = {name: VolumeScores(band, pipeline.threshold) for name in targets}
    pooled = VolumeScores(band, pipeline.threshold)
    show = bool(cfg.get("progress", True))
    for volume in volumes:
        with contextlib.ExitStack() as stack:
            sink = None
            if cfg.get("save_predictions"):
                path = output_dir / "predictions.tif"
                voxel_size = volume.image.source.voxel_size  # carried into the output
                sink = create_sink(path, volume.mask.shape, np.uint8, voxel_size=voxel_size)
                sink = stack.enter_context(sink)
            probs = pipeline.probabilities(volume.image, volume.lead)
            kept = np.zeros(volume.mask.shape, np.float32) if instances else None
            probs = _collected(_scored_against(probs, extra, targets), kept)
            probs = progress_bar(_written(probs, sink), len(volume.mask), "evaluate", show)
            metrics, counts = evaluate_volume(
                probs,
                volume.mask,
                edge_band=band,
                threshold=pipeline.threshold,
                min_size=int(post.min_size),
                connectivity=int(post.connectivity),
                scores=pooled,
            )
            if sink is not None:
                sink.commit()
            if kept is not None:
                instance_metrics = _instances(cfg, pipeline, volume, kept)
    extras = {
        name: {
            "test_mask": str(cfg.extra_masks[name]),
            "metrics": score.compute(),
            "counts": score.counts(),
            "blocks": score.block_record(),
        }
        for name, score in extra.items()
    }
    return metrics, counts, extras, instance_metrics, pooled.block_record()


def _log_instances(metrics: dict[str, Any] | None) -> None:
    if metrics is not None:
        from emseg.objects.run import log_instance_metrics

        log_instance_metrics(metrics)


def _write_summary(
    output_dir: Path,
    summary: dict[str, Any],
    instances: dict[str, Any] | None,
    metrics: dict[str, Any],
    threshold: float,
    edge_band: int,
) -> Path:
    """Write metrics.json (with the instance metrics, if any) and print the tables."""
    if instances is not None:
        summary["instances"] = instances
    done = output_dir / "metrics.json"
    write_json_atomic(done, summary)
    _print_table(metrics, threshold, edge_band)
    _log_instances(instances)
    return done


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
    if cfg.get("prediction") is not None:
        return _run_prediction(cfg, output_dir, limit, start)
    pipeline = build_pipeline(cfg)
    with contextlib.ExitStack() as stack:
        volumes = _eval_volumes(cfg, pipeline, split, limit, stack)
        log.info(
            "evaluating %s on %s (%d slices) with %s",
            pipeline.checkpoint.path,
            ", ".join(str(volume.image_path) for volume in volumes),
            sum(len(volume.mask) for volume in volumes),
            pipeline.predictor.describe(),
        )
        metrics, counts, extras, instances, blocks = _score(cfg, pipeline, volumes, output_dir)
    volume = volumes[0]
    described = pipeline.describe()
    summary = {
        "metrics": metrics,
        "threshold": pipeline.threshold,
        "edge_band": int(cfg.edge_band),
        "split": split,
        "slices": int(sum(len(v.mask) for v in volumes)),
        "counts": counts,
        "checkpoint": described["checkpoint"],
        "test_image": str(volume.image_path),
        "test_mask": str(volume.mask_path),
        "volumes": [{"image": str(v.image_path), "labels": str(v.mask_path)} for v in volumes],
        "inference": described["inference"],
        "postprocess": described["postprocess"],
        "checkpoint_settings": described["checkpoint_settings"],
        "extra_masks": extras,
        "fg_iou_blocks": blocks,
        "seconds": time.perf_counter() - start,
        "hardware": describe_hardware(),
    }
    done = _write_summary(
        output_dir, summary, instances, metrics, pipeline.threshold, int(cfg.edge_band)
    )
    for name, extra in extras.items():
        log.info("fg_iou against extra_masks.%s: %.4f", name, extra["metrics"]["fg_iou"])
    log.info("wrote %s (%.1f s)", done, summary["seconds"])
    return metrics


def _given(*keys: str) -> list[str]:
    """The command-line overrides of ``keys`` (or below them); outside Hydra every key of
    ``keys`` counts as given (the composed config is what the caller chose)."""
    if not HydraConfig.initialized():
        return list(keys)
    names = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return [n for n in names if any(n == k or n.startswith(f"{k}.") for k in keys)]


def _check_prediction_mode(cfg: DictConfig, split: str) -> None:
    """Refuse what does not apply to scoring an existing prediction (one error each)."""
    if not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path") is not None:
        raise ConfigError(
            "prediction= scores an existing prediction without a model; ckpt_path is not "
            "used: give one of them"
        )
    if split != "test":
        raise ConfigError(f"prediction= scores the test labels (data.test_mask), not split={split}")
    if cfg.get("save_predictions"):
        raise ConfigError(
            "prediction= reads a prediction: save_predictions=true has nothing to write"
        )
    if HydraConfig.initialized():
        ignored = _given("inference", "postprocess", "val_choice", "checkpoint_settings")
        if ignored:
            raise ConfigError(
                f"prediction= scores a finished prediction: {ignored[0]} does not apply (the "
                "prediction was made with its own settings; a blockwise store records them)"
            )


def _run_prediction(
    cfg: DictConfig, output_dir: Path, limit: int | None, start: float
) -> dict[str, float | None]:
    """``eval.py prediction=<volume>``: score it against ``data.test_mask``, write metrics.json."""
    split = str(cfg.get("split", "test"))
    _check_prediction_mode(cfg, split)
    data = cfg.get("data") or {}
    labels = str(data.get("test_mask") or "")
    if not labels:
        raise ConfigError("prediction= needs its labels: data.test_mask=<labels volume>")
    convention, unlabelled = str(data.get("labels") or "auto"), data.get("unlabelled")
    prediction = str(cfg.prediction)
    log.info("scoring the prediction %s against %s", prediction, labels)
    scored = score_prediction(
        prediction,
        labels,
        convention=convention,
        unlabelled=unlabelled,
        threshold=check_threshold(cfg.get("threshold", 0.5)),
        threshold_given=bool(_given("threshold")),
        edge_band=int(cfg.edge_band),
        limit_slices=limit,
        allow_incomplete=bool(cfg.get("allow_incomplete", False)),
        extra_masks={str(k): str(v) for k, v in dict(cfg.get("extra_masks") or {}).items()},
    )
    run = scored.prediction.get("run") or {}
    instances = None
    if cfg.get("instances"):
        instances = _prediction_instances(cfg, prediction, labels, convention, unlabelled, limit)
    summary = {
        "metrics": scored.metrics,
        "threshold": scored.threshold,
        "edge_band": int(cfg.edge_band),
        "split": split,
        "slices": scored.slices,
        "counts": scored.counts,
        "checkpoint": run.get("checkpoint"),
        "prediction": scored.prediction,
        "test_image": run.get("input"),
        "test_mask": labels,
        "labels": {"convention": convention, "unlabelled": unlabelled},
        "inference": run.get("inference"),
        "postprocess": run.get("postprocess"),
        "extra_masks": scored.extra_masks,
        "fg_iou_blocks": scored.blocks,
        "seconds": time.perf_counter() - start,
        "hardware": describe_hardware(),
    }
    done = _write_summary(
        output_dir, summary, instances, scored.metrics, scored.threshold, int(cfg.edge_band)
    )
    log.info("wrote %s (%.1f s)", done, summary["seconds"])
    return scored.metrics


def _prediction_instances(
    cfg: DictConfig,
    prediction: str,
    labels: str,
    convention: str,
    unlabelled: int | None,
    limit: int | None,
) -> dict[str, Any]:
    """``prediction=<volume> instances=true``: the prediction read whole (a blockwise store: its
    probabilities), split into objects and matched to the labels' connected components."""
    from emseg.objects.run import instance_settings, score_instances
    from emseg.objects.volumes import load_objects_input

    kind, path, key = parse_volume(prediction)
    if kind == "zarr" and not key and (path / "probabilities").exists():
        prediction = f"{prediction.rstrip('/')}/probabilities"
    threshold = check_threshold(cfg.get("threshold", 0.5))
    volume = load_objects_input(prediction, "auto", threshold, key="prediction")
    if volume.kind == "labels":
        raise DataError(f"prediction: {volume.path} holds instance ids; use measure.py truth=")
    probability = (
        volume.probability if volume.probability is not None else volume.mask.astype(np.float32)
    )
    targets = read_targets(labels, convention, unlabelled, volume.shape, str(volume.path))
    if limit is not None:
        probability, targets = probability[:limit], targets[:limit]
    settings = instance_settings(cfg)
    return score_instances(probability, targets, threshold, settings, 0, 1, volume.voxel_size)
