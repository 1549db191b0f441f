"""Segment any EM image or volume: ``python predict.py ckpt_path=... input=... output=...``.

The input (2D ``(Y, X)`` or 3D ``(Z, Y, X)``, uint8 / uint16 / float, any format
:func:`emseg.io.open_volume` reads) is streamed slice by slice through the inference pipeline
(:func:`emseg.inference.build_pipeline`) and the foreground probabilities are written slice by
slice, so memory stays bounded whatever the volume size. Every output goes through an atomic
:class:`~emseg.io.VolumeSink`: it appears under its name only when complete, and nothing is
left behind on an error.

An ``output`` ending in ``.zarr`` (``out.zarr``, ``out.ome.zarr``) is predicted blockwise
instead, by ``blockwise.workers`` processes into one OME-Zarr store, resumably
(:mod:`emseg.blockwise.run`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from emseg.cli import progress_bar
from emseg.errors import ConfigError
from emseg.inference import InferencePipeline, build_pipeline
from emseg.io import VolumeSink, VolumeSource, check_output_path, create_sink, open_volume
from emseg.io.encoding import check_output_dtype, probabilities_as
from emseg.io.formats import parse_volume
from emseg.postprocess import remove_small_components_slices

__all__ = ["run"]

log = logging.getLogger(__name__)

# Foreground in the written binary masks (0 / 255, visible in any viewer).
MASK_VALUE = np.uint8(255)


def _outputs(cfg: DictConfig) -> tuple[Path, Path | None]:
    """The output paths, checked before any work is done (nothing is overwritten by mistake)."""
    input_path, output = Path(str(cfg.input)), Path(str(cfg.output))
    mask_output = Path(str(cfg.mask_output)) if cfg.get("mask_output") else None
    overwrite = bool(cfg.overwrite)
    check_output_path(output, "output", overwrite, [input_path])
    if mask_output is not None:
        check_output_path(mask_output, "mask_output", overwrite, [input_path])
        if mask_output.resolve() == output.resolve():
            raise ConfigError("mask_output must differ from output")
    return output, mask_output


def _object_outputs(cfg: DictConfig, output: Path, inputs: list[Path]) -> Any:
    """``instances=true``: the label volume and object table of the output, checked now."""
    if not cfg.get("instances"):
        return None
    from emseg.objects.outputs import ObjectOutputs

    given = cfg.get("instances_output")
    labels = str(given) if given else str(output.with_name(f"{output.stem}_instances.tif"))
    table = output.with_name(f"{output.stem}_objects.csv")
    outputs = ObjectOutputs(table, labels)
    outputs.check(bool(cfg.overwrite), inputs, "instances")
    return outputs


def _write_objects(
    cfg: DictConfig, pipeline: InferencePipeline, source: VolumeSource, outputs: Any, paths: tuple
) -> dict[str, Any]:
    """The objects of the written prediction: its probabilities read back, above the threshold
    (the written mask when small components were removed from it), into instances, measured."""
    from emseg.objects.run import analyse, instance_settings, measure_settings
    from emseg.objects.volumes import load_objects_input

    output, mask_output = paths
    written = load_objects_input(str(output), "probabilities", pipeline.threshold)
    mask = written.mask
    if mask_output is not None and int(pipeline.postprocess.min_size) > 0:
        mask = load_objects_input(str(mask_output), "mask").mask
    voxel = getattr(source, "voxel_size", None)
    labels, table, summary = analyse(
        mask, written.probability, None, voxel, instance_settings(cfg), measure_settings(cfg)
    )
    summary = {"input": str(source.path), "probabilities": str(output), **summary}
    return outputs.write(labels, table, summary, voxel, bool(cfg.overwrite))


def _predict_blockwise_objects(cfg: DictConfig) -> dict[str, Any]:
    """``output=<store>.zarr instances=true``: the blockwise prediction, then its objects
    block by block (:func:`emseg.objects.blockwise.instances_blockwise`): labels in
    ``<store>/instances``, the table ``<store stem>_objects.csv`` beside the store."""
    from emseg.blockwise.run import predict_blockwise
    from emseg.objects.blockwise import check_blockwise_settings, instances_blockwise
    from emseg.objects.outputs import ObjectOutputs
    from emseg.objects.run import block_settings, instance_settings, measure_settings

    output = Path(str(cfg.output))
    if "probabilities" not in list(cfg.blockwise.get("arrays", ["probabilities"])):
        raise ConfigError("instances=true needs the probabilities array: blockwise.arrays")
    labels = str(cfg.get("instances_output") or f"{output}/instances")
    outputs = ObjectOutputs(output.with_name(f"{output.stem}_objects.csv"), labels)
    outputs.check(bool(cfg.overwrite), [Path(str(cfg.input))], "instances")
    settings, measure = instance_settings(cfg), measure_settings(cfg)
    check_blockwise_settings(settings, None)  # before any block is predicted
    result = predict_blockwise(cfg)
    if not result.get("complete"):
        return result
    summary = instances_blockwise(
        f"{output}/probabilities",
        "probabilities",
        float(result["threshold"]),
        labels,
        outputs,
        settings,
        measure,
        result.get("voxel_size"),
        block_settings(cfg, "objects_blockwise"),
        None,
        bool(cfg.overwrite),
    )
    return {**result, "objects": summary["outputs"], "object_count": summary["count"]}


def _check_min_size(pipeline: InferencePipeline, mask_output: Path | None) -> None:
    if int(pipeline.postprocess.min_size) > 0 and mask_output is None:
        source = "the checkpoint's evaluation settings remove" if pipeline.applied else "removes"
        raise ConfigError(
            f"postprocess.min_size {source} small components from the binary mask: also set "
            "mask_output=<mask.tif>, or postprocess.min_size=0"
        )


def _mask_pages(source: VolumeSource) -> Iterator[np.ndarray]:
    for z in range(len(source)):
        yield source[z] >= MASK_VALUE // 2


def _remove_small(pipeline: InferencePipeline, raw: Path, sink: VolumeSink, show: bool) -> None:
    """Second pass: the raw mask re-read from ``raw``, small components removed, into ``sink``."""
    post = pipeline.postprocess
    with open_volume(raw, "mask") as written:
        kept = remove_small_components_slices(
            lambda: _mask_pages(written), int(post.min_size), int(post.connectivity)
        )
        for mask in progress_bar(kept, len(written), "remove small components", show):
            sink.write(mask * MASK_VALUE)
    sink.close()


def _predict(
    cfg: DictConfig, pipeline: InferencePipeline, source: VolumeSource, outputs: tuple
) -> None:
    """Write the probabilities (and the thresholded mask) of every slice of ``source``."""
    output, mask_output = outputs
    dtype, show = str(cfg.output_dtype), bool(cfg.get("progress", True))
    remove = mask_output is not None and int(pipeline.postprocess.min_size) > 0
    voxel = getattr(source, "voxel_size", None)  # outputs carry the input's voxel size
    with contextlib.ExitStack() as stack:
        sink = create_sink(output, source.shape, dtype, source.ndim, voxel_size=voxel)
        sinks = [stack.enter_context(sink)]
        if mask_output is not None:
            tag = ".raw" if remove else ""
            sink = create_sink(mask_output, source.shape, np.uint8, source.ndim, tag, voxel)
            sinks.append(stack.enter_context(sink))
        probs = pipeline.probabilities(source)
        for prob in progress_bar(probs, len(source), f"predict {source.path.name}", show):
            sinks[0].write(probabilities_as(prob, dtype))
            if len(sinks) > 1:
                sinks[1].write((prob > pipeline.threshold).astype(np.uint8) * MASK_VALUE)
        for sink in sinks:
            sink.close()
        if remove:  # the unfiltered mask is only an intermediate (deleted with the stack)
            final = create_sink(mask_output, source.shape, np.uint8, source.ndim, "", voxel)
            _remove_small(pipeline, sinks[1].tmp_path, stack.enter_context(final), show)
            sinks[1] = final
        for sink in sinks:  # all outputs appear together, or none
            sink.commit()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Predict ``cfg.input`` with ``cfg.ckpt_path`` and write ``cfg.output`` (see predict.yaml).

    Returns:
        The written file names, the number of slices, the effective inference settings and
        the seconds taken.
    """
    if parse_volume(str(cfg.output))[0] == "zarr":  # one chunked store, written blockwise
        from emseg.blockwise.run import predict_blockwise

        if not cfg.get("instances"):
            return predict_blockwise(cfg)
        return _predict_blockwise_objects(cfg)
    if cfg.get("roi") is not None:
        raise ConfigError(
            f"roi: a region of interest is predicted into a Zarr store (output=<store>.zarr); "
            f"{cfg.output} is a single-process output of the whole input"
        )
    start = time.perf_counter()
    check_output_dtype(cfg.output_dtype)
    outputs = _outputs(cfg)
    objects = _object_outputs(cfg, outputs[0], [Path(str(cfg.input))])
    with open_volume(Path(str(cfg.input))) as source:
        pipeline = build_pipeline(cfg)
        _check_min_size(pipeline, outputs[1])
        pipeline.warn_on_intensities(source, str(source.path))
        log.info(
            "predicting %s %s %s with %s",
            source.path,
            "x".join(map(str, source.shape if source.ndim == 3 else source.shape[1:])),
            source.dtype,
            pipeline.predictor.describe(),
        )
        _predict(cfg, pipeline, source, outputs)
        written = _write_objects(cfg, pipeline, source, objects, outputs) if objects else {}
    seconds = time.perf_counter() - start
    output, mask_output = outputs
    log.info("wrote %s%s in %.1f s", output, f" and {mask_output}" if mask_output else "", seconds)
    return {
        "output": str(output),
        "mask_output": str(mask_output) if mask_output else None,
        "slices": len(source),
        "inference": pipeline.predictor.describe(),
        "objects": written or None,
        "seconds": seconds,
    }
