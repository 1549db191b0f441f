"""The blockwise engine: daisy (funkelab) schedules the blocks over worker processes.

daisy gives what a blockwise prediction needs and nothing emseg would write itself: blocks as
read / write ROIs over a total ROI, one OS process per worker running a zero-argument worker
function (which loads the model once and then asks for block after block), done markers that
persist which blocks completed (a rerun skips them), bounded retries of a failed block, and a
watchdog that preempts a block stuck past its timeout. The choice against Dask distributed is
argued, with measurements, in README.md ("Large volumes").

Only this module imports daisy, so that a missing install is one error line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blockwise.plan import Block, BlockPlan
from emseg.blockwise.progress import BlockProgress
from emseg.errors import ConfigError, EmsegError

__all__ = [
    "BlockwiseError",
    "BlockwiseOutcome",
    "block_box",
    "format_block",
    "import_daisy",
    "run_blocks",
    "serve_blocks",
]

log = logging.getLogger(__name__)

TASK_ID = "predict"


class BlockwiseError(EmsegError):
    """Blocks that failed after their retries (named by their boxes), or an abandoned run."""


def import_daisy() -> Any:
    """The daisy module, or one :class:`ConfigError` saying how to install it."""
    try:
        import daisy
    except ImportError as err:
        raise ConfigError(
            "blockwise prediction (output=<store>.zarr) needs daisy: pip install 'daisy>=2,<3' "
            f"(or pip install -e .) ({err})"
        ) from err
    return daisy


@dataclass
class BlockwiseOutcome:
    """What a run of :func:`run_blocks` did.

    Attributes:
        total: blocks in the plan.
        completed: blocks done in this run.
        skipped: blocks done by an earlier run (or masked out by ``skip``).
        failed: the boxes (:data:`~emseg.blockwise.plan.Block`) of the blocks that failed
            after their retries.
        unfinished: blocks neither done nor skipped (the failed ones and any a dead worker
            left without a failure record).
        seconds: wall time of the scheduler.
    """

    total: int
    completed: int
    skipped: int
    failed: list[Block] = field(default_factory=list)
    unfinished: int = 0
    seconds: float = 0.0


def block_box(block: Any) -> Block:
    """The ``(z0, z1, y0, y1, x0, x1)`` box of a daisy block's write ROI."""
    offset, shape = block.write_roi.offset, block.write_roi.shape
    box = [(int(offset[axis]), int(offset[axis]) + int(shape[axis])) for axis in range(3)]
    return tuple(v for pair in box for v in pair)  # type: ignore[return-value]


def format_block(box: Block) -> str:
    """``z 0-15 y 0-2047 x 2048-4095`` (inclusive ranges, the volume's voxels)."""
    z0, z1, y0, y1, x0, x1 = box
    return f"z {z0}-{z1 - 1} y {y0}-{y1 - 1} x {x0}-{x1 - 1}"


def serve_blocks(client: Any, process: Callable[[Block], None], what: str = "block") -> None:
    """A worker's loop: ask ``client`` (a ``daisy.Client``) for blocks until none is left and
    run ``process(box)`` on each; a block that raises is reported to daisy (which logs it,
    retries it, then lists it as failed) and the loop goes on with the next one.

    Raises:
        Exception: the scheduler connection itself failed (no block was acquired).
    """
    while True:
        acquired = False
        try:
            with client.acquire_block() as block:
                if block is None:
                    return
                acquired = True
                box = block_box(block)
                start = time.perf_counter()
                process(box)
                log.info("%s %s in %.2f s", what, format_block(box), time.perf_counter() - start)
        except Exception:
            if not acquired:
                raise


def run_blocks(
    plan: BlockPlan,
    worker: Callable[[], None],
    workers: int,
    tracking_dir: Path,
    log_dir: Path,
    max_retries: int = 2,
    block_timeout_s: float = 3600.0,
    progress: bool = True,
    skip: Sequence[bool] | None = None,
    host: str | None = None,
    task_id: str = TASK_ID,
) -> BlockwiseOutcome:
    """Run ``worker`` in ``workers`` processes until every block of ``plan`` is done or failed.

    Args:
        plan: the blocks; daisy's total ROI is the region of interest grown by the z halo, its
            write ROI one block, its read ROI the block grown by the z halo (shrunk at the
            region's ends).
        worker: a picklable zero-argument callable run in each worker process: it connects a
            ``daisy.Client`` and processes blocks until none is left.
        workers: the number of worker processes.
        tracking_dir: daisy's done markers and failure counts (kept across runs: a rerun
            skips the blocks recorded there).
        log_dir: per-worker logs (``worker_<id>.out`` / ``.err``).
        max_retries: attempts after the first before a block counts as failed.
        block_timeout_s: preempt (kill and retry) a block running longer.
        progress: the live progress line (:class:`~emseg.blockwise.progress.BlockProgress`)
            and daisy's summary at the end.
        skip: one flag per block (plan order, z then y then x): ``True`` = not this run, not
            recorded as done.
        host: the scheduler address the workers connect to (``None``: daisy detects it).
        task_id: daisy's name of the task (the progress line starts with it).

    Returns:
        The counts and the failed blocks' boxes (the caller decides what failure means).

    Raises:
        BlockwiseError: the workers kept dying (daisy abandoned the task), with daisy's reason.
    """
    daisy = import_daisy()
    tracking_dir, log_dir = Path(tracking_dir), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    daisy.logging.set_log_basedir(str(log_dir))
    halo = int(plan.halo)
    (z0, _), (y0, _), (x0, _) = plan.roi
    extent, block = plan.shape, plan.block_shape
    mask = None if skip is None else np.asarray(skip, dtype=bool).reshape(plan.grid)
    task = daisy.Task(
        task_id,
        total_roi=daisy.Roi((z0 - halo, y0, x0), (extent[0] + 2 * halo, *extent[1:])),
        read_roi=daisy.Roi((-halo, 0, 0), (block[0] + 2 * halo, *block[1:])),
        write_roi=daisy.Roi((0, 0, 0), block),
        process_function=worker,
        read_write_conflict=False,  # blocks write disjoint chunks and read only the input
        fit="shrink",
        max_workers=int(workers),
        max_retries=int(max_retries),
        timeout=float(block_timeout_s),
        tracking_path=str(tracking_dir),
        skip_mask=mask,
    )
    start = time.perf_counter()
    try:
        observer = BlockProgress(task_id, math.prod(extent), len(plan)) if progress else False
        states = daisy.run_blockwise(
            [task], progress=observer, summary=progress, return_states=True, host=host
        )
    except RuntimeError as err:  # abandonment: the worker restart cap was exhausted
        raise BlockwiseError(f"blockwise prediction abandoned: {err}") from err
    seconds = time.perf_counter() - start
    state = states[task_id]
    return BlockwiseOutcome(
        total=int(state.total_block_count),
        completed=int(state.completed_count) - int(state.skipped_count),
        skipped=int(state.skipped_count),
        failed=sorted(block_box(block) for block in task.failed_blocks()),
        unfinished=int(state.total_block_count) - int(state.completed_count),
        seconds=seconds,
    )
