"""``predict.py ... output=out.zarr``: a blockwise, resumable prediction into one OME-Zarr store.

:func:`predict_blockwise` is what :func:`emseg.predict.run` calls for a Zarr output:

1. validates the settings and builds the inference pipeline once here (the checkpoint's
   evaluation settings are resolved here and handed to the workers as plain values);
2. takes the run's lock (``<output>.blockwise/lock``: a second run on the same output is
   refused while the first holds it; the kernel releases it if the run is killed);
3. creates the store with all of its metadata
   (:func:`emseg.io.prediction_store.create_prediction_store`), or
   reopens an unfinished one written with the same layout and settings (a resumed run);
4. runs the blocks on daisy (:func:`emseg.blockwise.engine.run_blocks`), done markers in
   ``<output>.blockwise/tracking``, per-worker logs in ``<output>.blockwise/logs``; the
   workers are local processes (the scheduler listens on 127.0.0.1 only), or with
   ``blockwise.launcher=slurm`` one ``srun`` job each (:mod:`emseg.blockwise.slurm`,
   started from ``<output>.blockwise/worker.json``);
5. marks the store complete when every block is done, or raises :class:`BlockwiseError`
   listing the failed blocks by z range (the store stays incomplete, and a rerun of the same
   command does only the missing blocks).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emseg.blockwise.dry_run import dry_run, format_dry_run
from emseg.blockwise.engine import BlockwiseError, format_block, import_daisy, run_blocks
from emseg.blockwise.plan import BlockPlan, block_yx_of
from emseg.blockwise.roi import Roi, parse_roi
from emseg.blockwise.settings import BlockwiseSettings
from emseg.blockwise.slurm import SrunWorker, srun_command
from emseg.blockwise.worker import BlockWorker
from emseg.errors import ConfigError
from emseg.inference import InferencePipeline, build_pipeline
from emseg.inference.sliding_window import model_stride, plan_slice
from emseg.io import open_volume
from emseg.io.encoding import check_output_dtype
from emseg.io.formats import parse_volume
from emseg.io.prediction_store import (
    ARRAY_NAMES,
    PredictionStore,
    StoreLayout,
    check_layout_matches,
    chunk_aligned,
    create_prediction_store,
    open_prediction_store,
)
from emseg.io.sink import check_writable_directory

__all__ = ["exclusive_run", "predict_blockwise", "run_directory"]

log = logging.getLogger(__name__)


def run_directory(output: Path) -> Path:
    """The run's bookkeeping next to the store: ``<output>.blockwise/`` (lock, tracking, logs)."""
    return output.with_name(output.name + ".blockwise")


@contextlib.contextmanager
def exclusive_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/lock`` for the run, or :class:`ConfigError` if another run holds it."""
    run_dir.mkdir(exist_ok=True)
    with open(run_dir / "lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ConfigError(
                f"output: another run is writing {run_dir.with_suffix('')} (lock "
                f"{run_dir / 'lock'} is held); wait for it or stop it first"
            ) from err
        yield


def _check_config(cfg: DictConfig, pipeline: InferencePipeline) -> None:
    if cfg.get("mask_output"):
        raise ConfigError(
            "mask_output: a Zarr output holds the mask itself (blockwise.arrays=[...,mask]); "
            "leave mask_output unset"
        )
    if int(pipeline.postprocess.min_size) > 0:
        raise ConfigError(
            "postprocess.min_size: removing small 3D components needs the whole mask and is "
            "not done blockwise yet; set postprocess.min_size=0 for a Zarr output"
        )


def _gpus(cfg: DictConfig, workers: int) -> list[str]:
    """The GPU ids the workers spread over (empty: CPU); more workers than GPUs is refused."""
    import torch

    device = str(cfg.inference.get("device", "auto"))
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i for i in visible.split(",") if i] if visible else []
    ids = ids or [str(i) for i in range(torch.cuda.device_count())]
    if workers > len(ids):
        raise ConfigError(
            f"blockwise.workers={workers} but only {len(ids)} GPU(s) are visible; one worker "
            "per GPU (or inference.device=cpu)"
        )
    return ids


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _worker_config(cfg: DictConfig, pipeline: InferencePipeline, threads: int | None) -> dict:
    """The settings a worker builds its pipeline from: what this process resolved, as values.

    ``threads`` is ``None`` for GPU workers: each sees only its own GPU, as ``cuda:0``.
    """
    inference = _plain(cfg.inference)
    if inference is not None and threads is None:
        inference["device"] = "cuda:0"
    return {
        "ckpt_path": str(pipeline.checkpoint.path),
        "inference": inference,
        "postprocess": _plain(cfg.get("postprocess")),
        "threshold": float(pipeline.threshold),
        "torch_threads": threads,
        "checkpoint_settings": False,
    }


def _run_record(cfg: DictConfig, pipeline: InferencePipeline, source: Any, plan: BlockPlan) -> dict:
    """What the store was written with (a resumed run must repeat it), as JSON values."""
    record = {
        "input": str(Path(str(cfg.input)).resolve()),
        "input_shape": list(source.shape),
        "checkpoint": str(Path(pipeline.checkpoint.path).resolve()),
        "inference": pipeline.window.as_dict(),
        "postprocess": pipeline.postprocess.as_dict(),
        "threshold": float(pipeline.threshold),
        "output_dtype": str(cfg.output_dtype),
        "block_shape": list(plan.block_shape),
        "roi": [list(r) for r in plan.roi],
    }
    return json.loads(json.dumps(record))


def _open_store(
    output: Path, layout: StoreLayout, record: dict, overwrite: bool, tracking: Path
) -> PredictionStore:
    """A new store (stale done markers removed), or the unfinished one this run resumes."""
    if output.exists() and not overwrite:
        store = open_prediction_store(output)
        if store.complete:
            raise ConfigError(
                f"output: {output} already exists (complete); pass overwrite=true to replace it"
            )
        check_layout_matches(store, layout, record, "output")
        log.info("resuming the unfinished prediction in %s", output)
        return store
    shutil.rmtree(tracking, ignore_errors=True)  # done markers belong to the old store
    return create_prediction_store(output, layout, record, overwrite=overwrite)


def predict_blockwise(cfg: DictConfig, skip: Sequence[bool] | None = None) -> dict[str, Any]:
    """Predict ``cfg.input`` into the Zarr store ``cfg.output`` block by block (see module).

    Args:
        cfg: a composed conf/predict.yaml whose ``output`` is a ``.zarr`` directory.
        skip: one flag per block (z order) to leave out of this run (a partial run, as a
            killed run leaves; the next run without it finishes the rest).

    Returns:
        The store, block counts, halo, workers and seconds; with ``blockwise.dry_run`` the
        dry run's report instead (nothing written).

    Raises:
        ConfigError: a bad setting or output; BlockwiseError: blocks failed (listed).
    """
    import_daisy()
    settings = BlockwiseSettings.from_config(_plain(cfg.get("blockwise")))
    dtype = check_output_dtype(str(cfg.output_dtype))
    output, input_path = Path(str(cfg.output)), Path(str(cfg.input))
    _, store_path, key = parse_volume(str(cfg.output))
    if key:
        raise ConfigError(
            f"output: {cfg.output} names an array inside {store_path}; give the store itself "
            f"(output={store_path}: its arrays are {', '.join(ARRAY_NAMES)})"
        )
    if not output.parent.is_dir():
        raise ConfigError(f"output: directory {output.parent} does not exist")
    if output.resolve() == input_path.resolve():
        raise ConfigError(f"output: {output} is also the input; choose another name")
    check_writable_directory(output.parent, "output")
    pipeline = build_pipeline(cfg)
    _check_config(cfg, pipeline)
    slurm = settings.launcher == "slurm"
    gpus = [] if slurm else _gpus(cfg, int(settings.workers))
    threads = None if gpus else settings.threads_per_worker()
    if slurm:  # each job's own cores
        threads = int(settings.slurm.cpus_per_worker)
    if cfg.get("torch_threads") is not None and not gpus:
        threads = int(cfg.torch_threads)
    with open_volume(str(cfg.input)) as source:
        arrays = {name: (dtype if name == "probabilities" else "uint8") for name in settings.arrays}
        voxel = getattr(source, "voxel_size", None)
        roi = parse_roi(cfg.get("roi"), str(cfg.get("roi_unit", "voxel")), source.shape, voxel)
        extent = tuple(b - a for a, b in roi)
        start = [a for a, _ in roi]
        translation = [a * v for a, v in zip(start, voxel, strict=True)] if voxel else start
        layout = StoreLayout(
            extent, settings.chunks, arrays, voxel, tuple(translation), settings.pyramid + 1
        )
        plan = _plan(pipeline, source, settings, layout, roi)
        if settings.dry_run:
            report = dry_run(pipeline, source, plan, int(settings.workers), threads, dtype)
            print(format_dry_run(report), flush=True)
            return {"output": str(output), "dry_run": True, **report}
        return _run(cfg, pipeline, source, settings, layout, plan, output, threads, gpus, skip)


def _plan(
    pipeline: InferencePipeline,
    source: Any,
    settings: BlockwiseSettings,
    layout: StoreLayout,
    roi: Roi,
) -> BlockPlan:
    """The blocks of ``roi``; blocks thinner than the halo or narrower than a window refused."""
    halo = pipeline.z_halo(source)
    if int(settings.block_slices) < halo:
        raise ConfigError(
            f"blockwise.block_slices={settings.block_slices} is smaller than the halo of {halo} "
            "slices (2.5D context + the 3D median's z radius) that each block reads on both "
            f"sides; use at least {chunk_aligned(halo, layout.chunks[0])}"
        )
    block_yx = block_yx_of(settings.block_yx, layout.shape[1:], layout.chunks[1:])
    plan = BlockPlan(
        source.shape, int(settings.block_slices), layout.chunks[0], halo, roi, block_yx
    )
    tiles = not plan.whole_slices() or plan.shape[1:] != tuple(source.shape[1:])
    window = pipeline.window
    # The network's stride from the checkpoint: pipeline.predictor would move the network
    # onto this process's device (GPU 0 of a node whose GPUs belong to the workers).
    slice_plan = plan_slice(*source.shape[1:], window, model_stride(pipeline.checkpoint.net))
    if tiles and not slice_plan.single:
        if slice_plan.naive:
            raise ConfigError(
                "inference.mode=naive cannot be predicted in y / x tiles or a y / x roi (its "
                "disjoint tiles extend the slice); use inference.mode=gaussian"
            )
        cut = [b for b, s in zip(block_yx, plan.shape[1:], strict=True) if b < s]
        if cut and min(cut) < int(window.tile_size):
            raise ConfigError(
                f"blockwise.block_yx={list(block_yx)} is smaller than the sliding window's tile "
                f"(inference.tile_size={window.tile_size}): every window would be predicted "
                f"for several blocks; use blocks of at least {window.tile_size} pixels"
            )
    return plan


def _run(
    cfg: DictConfig,
    pipeline: InferencePipeline,
    source: Any,
    settings: BlockwiseSettings,
    layout: StoreLayout,
    plan: BlockPlan,
    output: Path,
    threads: int | None,
    gpus: list[str],
    skip: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Lock, create or resume the store, run the blocks, report (see the module docstring)."""
    slurm, dtype, halo = settings.launcher == "slurm", str(cfg.output_dtype), plan.halo
    run_dir = run_directory(output)
    with exclusive_run(run_dir):
        record = _run_record(cfg, pipeline, source, plan)
        store = _open_store(output, layout, record, bool(cfg.overwrite), run_dir / "tracking")
        worker = BlockWorker(
            _worker_config(cfg, pipeline, threads),
            os.path.abspath(str(cfg.input)),  # SLURM jobs may start elsewhere
            str(output.resolve()),
            dtype,
            None if slurm else os.getpid(),
            gpus,
            [a for a, _ in plan.roi],
        )
        process: Any = worker
        if slurm:
            command = srun_command(settings.slurm, worker.to_json(run_dir / "worker.json"))
            process = SrunWorker(command)
            where = f"SLURM jobs: {' '.join(command)}"
        else:
            where = f"GPUs {','.join(gpus)}" if gpus else f"{threads} CPU thread(s) each"
        log.info(
            "predicting %s %s (roi %s) blockwise into %s: %d blocks of %s voxels (z halo %d), "
            "%d worker(s) (%s)",
            source.path,
            "x".join(map(str, source.shape)),
            " ".join(f"{a}-{b - 1}" for a, b in plan.roi),
            output,
            len(plan),
            "x".join(map(str, plan.block_shape)),
            halo,
            settings.workers,
            where,
        )
        outcome = run_blocks(
            plan,
            process,
            int(settings.workers),
            run_dir / "tracking",
            run_dir / "logs",
            int(settings.max_retries),
            float(settings.block_timeout_s),
            bool(cfg.get("progress", True)),
            skip,
            settings.slurm.host if slurm else "127.0.0.1",
        )
        if outcome.failed or outcome.unfinished:
            listed = ", ".join(format_block(box) for box in outcome.failed[:20])
            more = "" if len(outcome.failed) <= 20 else f" and {len(outcome.failed) - 20} more"
            raise BlockwiseError(
                f"{outcome.unfinished} of {outcome.total} blocks not done"
                f"{': failed ' + listed + more if listed else ''} after "
                f"{settings.max_retries} retries; see {run_dir / 'logs'}; {output} stays "
                "incomplete: rerun the same command to do only the missing blocks"
            )
        if skip is None or not any(skip):
            store.mark_complete()
    done = store.complete
    log.info(
        "%s %s: %d blocks done now, %d before, in %.1f s",
        "wrote" if done else "partly wrote",
        output,
        outcome.completed,
        outcome.skipped,
        outcome.seconds,
    )
    return {
        "output": str(output),
        "complete": done,
        "blocks": outcome.total,
        "blocks_done": outcome.completed,
        "blocks_skipped": outcome.skipped,
        "halo": halo,
        "workers": int(settings.workers),
        "threads_per_worker": threads,
        "slices": source.shape[0],
        "threshold": float(pipeline.threshold),
        "voxel_size": getattr(source, "voxel_size", None),
        "seconds": outcome.seconds,
    }
