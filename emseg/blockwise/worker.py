"""One worker process of a blockwise prediction: the model loaded once, then block after block.

:class:`BlockWorker` is the zero-argument function daisy runs in each worker process
(:func:`emseg.blockwise.engine.run_blocks`); it is pickled with the plain settings it needs
(no Hydra, no open files). In the worker it

1. takes its device: GPU ``worker_id mod len(gpus)`` through ``CUDA_VISIBLE_DEVICES`` when
   the scheduler saw GPUs, else ``threads`` torch threads (a share of the CPU cores);
2. builds the inference pipeline once (:func:`emseg.inference.build_pipeline`: checkpoint,
   settings already resolved by the scheduler, so ``checkpoint_settings`` is off here);
3. asks daisy for blocks until none is left; each is predicted by :func:`predict_block` and
   written into the store; a block that raises is reported to daisy (retried there, then
   listed as failed) and the worker goes on with the next one.

A local worker whose scheduler died (``kill -9``) exits within :data:`ORPHAN_CHECK_S` seconds
instead of waiting out daisy's keep-alive (measured: orphaned daisy workers kept spinning).

On SLURM (:mod:`emseg.blockwise.slurm`) the same worker runs as
``python -m emseg.blockwise.worker <worker.json>`` (:meth:`BlockWorker.to_json`) on a compute
node, where its parent is SLURM's and only daisy's keep-alive and block timeout bound it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blockwise.engine import serve_blocks
from emseg.blockwise.plan import Block
from emseg.io.encoding import probabilities_as
from emseg.io.prediction_store import PredictionStore

__all__ = [
    "MASK_VALUE",
    "ORPHAN_CHECK_S",
    "BlockWorker",
    "exit_when_orphaned",
    "halve_yx",
    "predict_block",
]

log = logging.getLogger(__name__)

# Foreground in the mask array (as in predict.py's mask files).
MASK_VALUE = np.uint8(255)
# How often a worker checks that its scheduler is still alive.
ORPHAN_CHECK_S = 2.0


def predict_block(
    pipeline: Any,
    source: Any,
    store: PredictionStore,
    box: Block,
    dtype: str,
    origin: Sequence[int] = (0, 0, 0),
) -> None:
    """Predict the voxels ``box`` of ``source`` and write them into ``store``.

    Args:
        pipeline: an :class:`~emseg.inference.InferencePipeline`.
        source: the ``(Z, Y, X)`` input (:class:`~emseg.io.VolumeSource`); only the block's
            read range (and, for a y / x tile, the input under its windows) is read.
        store: the open prediction store; every one of its arrays is written.
        box: ``(z0, z1, y0, y1, x0, x1)`` in the input's voxels, aligned to the store's chunks.
        dtype: how probabilities are stored (``uint8`` | ``float16``).
        origin: the input voxel of the store's first voxel (the region of interest's start).
    """
    z0, z1, y0, y1, x0, x1 = box
    _, height, width = source.shape
    whole = (y0, y1, x0, x1) == (0, height, 0, width)
    region = None if whole else ((y0, y1), (x0, x1))
    probs = pipeline.block_probabilities(source, z0, z1, region)
    start = [z0 - origin[0], y0 - origin[1], x0 - origin[2]]
    for level in range(store.layout.levels):
        if level:  # each level is the 2 x 2 mean of the previous one, in y and x
            probs = halve_yx(probs)
            start = [start[0], start[1] // 2, start[2] // 2]
        blocks: dict[str, np.ndarray] = {}
        if "probabilities" in store.layout.arrays:
            blocks["probabilities"] = probabilities_as(probs, dtype)
        if "mask" in store.layout.arrays:
            blocks["mask"] = (probs > pipeline.threshold).astype(np.uint8) * MASK_VALUE
        store.write_block(start, blocks, level)


def halve_yx(volume: np.ndarray) -> np.ndarray:
    """The mean of every 2 x 2 pixels in y and x of ``(z, y, x)`` float ``volume``; an odd
    last row / column (the volume's end) is averaged with itself (edge padding).

    Blocks start at even y and x (chunk multiples), so the blocks' halves tile the half of the
    whole volume exactly (written here: a strided mean; scikit-image's ``downscale_local_mean``
    pads with zeros).
    """
    pad = [(0, 0), (0, volume.shape[1] % 2), (0, volume.shape[2] % 2)]
    padded = np.pad(volume, pad, mode="edge") if any(p[1] for p in pad) else volume
    z, y, x = padded.shape
    return padded.reshape(z, y // 2, 2, x // 2, 2).mean(axis=(2, 4), dtype=np.float32)


def exit_when_orphaned(scheduler_pid: int) -> None:
    """Exit this process (a daemon thread's check) once the scheduler process is gone."""

    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_S)
            if os.getppid() != scheduler_pid:
                os._exit(3)

    threading.Thread(target=watch, name="emseg-orphan-watch", daemon=True).start()


@dataclass
class BlockWorker:
    """The worker function daisy runs in each worker process (see the module docstring).

    Attributes:
        config: the plain inference config for :func:`emseg.inference.build_pipeline`
            (``ckpt_path``, ``inference``, ``postprocess``, ``threshold``, ``torch_threads``,
            ``checkpoint_settings: false``).
        input: the input volume string (:func:`emseg.io.open_volume`).
        output: the prediction store's path.
        dtype: how probabilities are stored.
        scheduler_pid: the local scheduler process (this worker's parent), watched so that the
            worker exits with it; ``None`` on SLURM (the parent is SLURM's).
        gpus: GPU ids to spread local workers over; empty = CPU, or SLURM's own GPU choice.
        origin: the input voxel ``(z, y, x)`` of the store's first voxel (``roi``'s start).
    """

    config: Mapping[str, Any]
    input: str
    output: str
    dtype: str
    scheduler_pid: int | None = None
    gpus: Sequence[str] = field(default_factory=list)
    origin: Sequence[int] = field(default_factory=lambda: [0, 0, 0])

    def to_json(self, path: Path) -> Path:
        """Write the worker's settings to ``path`` (what a SLURM job starts from)."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> BlockWorker:
        """The worker written by :meth:`to_json`."""
        return cls(**json.loads(Path(path).read_text()))

    def __call__(self) -> None:
        import daisy

        client = daisy.Client()
        if self.scheduler_pid is not None:
            exit_when_orphaned(int(self.scheduler_pid))
        logging.basicConfig(  # stderr is this worker's log file (<output>.blockwise/logs)
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
        )
        if self.gpus:  # before CUDA is initialised in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.gpus[client.worker_id % len(self.gpus)])
        from omegaconf import OmegaConf

        from emseg.inference import build_pipeline
        from emseg.io import open_volume
        from emseg.io.prediction_store import open_prediction_store

        pipeline = build_pipeline(OmegaConf.create(dict(self.config)))
        store = open_prediction_store(self.output)
        with open_volume(self.input) as source:

            def process(box: Block) -> None:
                predict_block(pipeline, source, store, box, self.dtype, self.origin)

            serve_blocks(client, process, "block")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        log.info("no block left; peak RSS of this worker %.0f MiB", peak)


if __name__ == "__main__":  # a SLURM worker: python -m emseg.blockwise.worker <worker.json>
    BlockWorker.from_json(Path(sys.argv[1]))()
