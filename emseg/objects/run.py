"""The object analysis of one volume, for ``measure.py`` and predict.py / eval.py ``instances``.

:func:`analyse` turns a mask (and its probabilities) or given labels into instance labels, the
object table and its summary (with instance metrics when true instances are given);
:func:`run` is ``measure.py``: read the input, analyse it, write every output.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy import ndimage

from emseg.errors import ConfigError
from emseg.io.units import voxel_or_none
from emseg.objects.blockwise import ObjectBlockSettings, instances_blockwise, uses_blockwise
from emseg.objects.instances import InstanceSettings, label_instances
from emseg.objects.measure import MeasureSettings, measure_objects, summarize
from emseg.objects.metrics import instance_metrics
from emseg.objects.outputs import ObjectOutputs
from emseg.objects.volumes import load_objects_input, truth_instances

__all__ = [
    "analyse",
    "block_settings",
    "instance_settings",
    "measure_settings",
    "resolve_voxel_size",
    "run",
    "score_instances",
]

log = logging.getLogger(__name__)


def instance_settings(cfg: DictConfig) -> InstanceSettings:
    """``cfg.objects`` (conf/objects) as :class:`InstanceSettings` (defaults when absent)."""
    node = cfg.get("objects")
    return InstanceSettings() if node is None else instantiate(node)


def measure_settings(cfg: DictConfig) -> MeasureSettings:
    """``cfg.measure`` as :class:`MeasureSettings` (defaults when absent)."""
    node = cfg.get("measure")
    return MeasureSettings() if node is None else instantiate(node)


def resolve_voxel_size(given: Any, recorded: Any, where: str) -> tuple[float, float, float] | None:
    """The command line's ``voxel_size`` ([z, y, x] nm), else the volume's, else ``None``
    (with a warning: sizes then in voxels)."""
    if given is not None:
        value = list(given) if OmegaConf.is_list(given) or isinstance(given, list | tuple) else None
        voxel = voxel_or_none(value, 1.0) if value is not None and len(value) == 3 else None
        if voxel is None:
            raise ConfigError(
                f"voxel_size must be three positive numbers [z, y, x] nm, got {given}"
            )
        return voxel
    if recorded is None:
        log.warning(
            "%s records no voxel size and voxel_size is not given: volumes and areas are "
            "reported in voxels (set voxel_size=[z,y,x] in nm for um3)",
            where,
        )
    return recorded


def analyse(
    mask: np.ndarray | None,
    probability: np.ndarray | None,
    labels: np.ndarray | None,
    voxel_size: tuple[float, float, float] | None,
    settings: InstanceSettings,
    measure: MeasureSettings,
    truth: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Instances (from ``mask``, or ``labels`` as given), their table and summary.

    Args:
        mask: ``(Z, Y, X)`` bool foreground (ignored when ``labels`` is given).
        probability: ``(Z, Y, X)`` float probabilities or ``None``.
        labels: ``(Z, Y, X)`` instance ids to measure as they are, or ``None``.
        voxel_size: ``(z, y, x)`` nm or ``None``.
        settings: how the mask becomes instances.
        measure: how objects are measured.
        truth: ``(Z, Y, X)`` true instances, or ``None``; then ``summary["instance_metrics"]``.

    Returns:
        ``(labels uint32, table, summary)``.
    """
    start = time.perf_counter()
    if labels is None:
        assert mask is not None
        labels = label_instances(mask, settings, probability, voxel_size)
    seconds_instances = time.perf_counter() - start
    table = measure_objects(labels, voxel_size, probability, measure)
    summary = summarize(table, labels.shape, voxel_size)
    summary["settings"] = settings.as_dict()
    summary["surface_sigma"] = float(measure.surface_sigma)
    if summary["count"] == 0:
        log.warning("no objects found: the table is empty")
    if truth is not None:
        if truth.shape != labels.shape:
            raise ConfigError(
                f"truth has shape {truth.shape} but the instances {labels.shape}; they must match"
            )
        summary["instance_metrics"] = instance_metrics(labels, truth, probability)
    summary["seconds"] = {
        "instances": seconds_instances,
        "total": time.perf_counter() - start,
    }
    return labels, table, summary


def log_instance_metrics(metrics: dict[str, Any]) -> None:
    """One log line of :func:`~emseg.objects.metrics.instance_metrics`."""
    log.info(
        "instances: %d predicted, %d true; AP %.4f, AP50 %.4f, F1@0.5 %.4f (P %.4f R %.4f), "
        "mean matched IoU %.4f, %d splits, %d merges",
        metrics["n_pred"],
        metrics["n_true"],
        metrics["ap"],
        metrics["ap50"],
        metrics["f1"],
        metrics["precision"],
        metrics["recall"],
        metrics["mean_matched_iou"],
        metrics["splits"],
        metrics["merges"],
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """``measure.py``: analyse ``cfg.input`` and write its outputs (see conf/measure.yaml).

    Returns:
        The summary (with the paths written).
    """
    settings, measure = instance_settings(cfg), measure_settings(cfg)
    labels_output = cfg.get("labels_output")
    outputs = ObjectOutputs(Path(str(cfg.table)), str(labels_output) if labels_output else None)
    overwrite = bool(cfg.get("overwrite", False))
    inputs = [Path(str(cfg.input))] + ([Path(str(cfg.truth))] if cfg.get("truth") else [])
    Path(str(cfg.table)).parent.mkdir(parents=True, exist_ok=True)
    outputs.check(overwrite, inputs)
    from emseg.inference import check_threshold

    threshold = check_threshold(cfg.get("threshold", 0.5))
    blocks = block_settings(cfg)
    if uses_blockwise(blocks, str(labels_output) if labels_output else None):
        return _run_blockwise(cfg, outputs, settings, measure, blocks, threshold)
    volume = load_objects_input(str(cfg.input), str(cfg.get("input_kind", "auto")), threshold)
    voxel = resolve_voxel_size(cfg.get("voxel_size"), volume.voxel_size, str(volume.path))
    truth = None
    if cfg.get("truth"):
        truth = truth_instances(str(cfg.truth), int(settings.connectivity))
    log.info("objects of %s (%s, %s)", volume.path, volume.kind, "x".join(map(str, volume.shape)))
    labels, table, summary = analyse(
        volume.mask, volume.probability, volume.labels, voxel, settings, measure, truth
    )
    summary = {
        "input": str(volume.path),
        "input_kind": volume.kind,
        "threshold": threshold if volume.kind == "probabilities" else None,
        "truth": str(cfg.truth) if cfg.get("truth") else None,
        **summary,
    }
    written = outputs.write(labels, table, summary, voxel, overwrite)
    log.info("%d objects; wrote %s", summary["count"], ", ".join(written.values()))
    if truth is not None:
        log_instance_metrics(summary["instance_metrics"])
    return {**summary, "outputs": written}


def block_settings(cfg: DictConfig, key: str = "blockwise") -> ObjectBlockSettings:
    """``cfg[key]`` as :class:`ObjectBlockSettings` (defaults when absent)."""
    node = cfg.get(key)
    return ObjectBlockSettings() if node is None else instantiate(node)


def _run_blockwise(
    cfg: DictConfig,
    outputs: ObjectOutputs,
    settings: InstanceSettings,
    measure: MeasureSettings,
    blocks: ObjectBlockSettings,
    threshold: float,
) -> dict[str, Any]:
    """``measure.py`` with a Zarr ``labels_output``: :func:`instances_blockwise`."""
    from emseg.objects.volumes import open_objects_input

    with open_objects_input(str(cfg.input)) as source:
        recorded, path = source.voxel_size, source.path
    voxel = resolve_voxel_size(cfg.get("voxel_size"), recorded, str(path))
    return instances_blockwise(
        str(cfg.input),
        str(cfg.get("input_kind", "auto")),
        threshold,
        str(cfg.labels_output),
        outputs,
        settings,
        measure,
        voxel,
        blocks,
        cfg.get("truth"),
        bool(cfg.get("overwrite", False)),
    )


def score_instances(
    probability: np.ndarray,
    targets: np.ndarray,
    threshold: float,
    settings: InstanceSettings,
    min_size: int = 0,
    connectivity: int = 1,
    voxel_size: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """eval.py ``instances=true``: instance metrics of a probability volume against targets.

    Args:
        probability: ``(Z, Y, X)`` float probabilities (after the pipeline's median).
        targets: ``(Z, Y, X)`` uint8 {0, 1, IGNORE}; the true instances are the 3D connected
            components of the 1s (``settings.connectivity``), IGNORE voxels are left out.
        threshold: probability above which a voxel is foreground.
        settings: how the mask becomes instances.
        min_size / connectivity: ``postprocess.min_size`` applied to the mask first, as the
            pixel metrics do.
        voxel_size: ``(z, y, x)`` nm for the distance transform, or ``None``.

    Returns:
        :func:`~emseg.objects.metrics.instance_metrics` plus the settings used.
    """
    from emseg.data.labels import IGNORE
    from emseg.postprocess import remove_small_components

    mask = probability > threshold
    if min_size > 0:
        mask = remove_small_components(mask, min_size, connectivity).astype(bool)
    labels = label_instances(mask, settings, probability, voxel_size)
    structure = ndimage.generate_binary_structure(3, int(settings.connectivity))
    truth = ndimage.label(targets == 1, structure)[0]
    metrics = instance_metrics(labels, truth, probability, ignore=targets == IGNORE)
    return {**metrics, "settings": settings.as_dict(), "truth": "3D connected components"}
