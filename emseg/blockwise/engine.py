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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blockwise.plan import BlockPlan
from emseg.errors import ConfigError, EmsegError

__all__ = ["BlockwiseError", "BlockwiseOutcome", "import_daisy", "run_blocks"]

log = logging.getLogger(__name__)

TASK_ID = "predict"


class BlockwiseError(EmsegError):
    """Blocks that failed after their retries (named by their z ranges), or an abandoned run."""


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
        failed: ``(z0, z1)`` of the blocks that failed after their retries.
        unfinished: blocks neither done nor skipped (the failed ones and any a dead worker
            left without a failure record).
        seconds: wall time of the scheduler.
    """

    total: int
    completed: int
    skipped: int
    failed: list[tuple[int, int]] = field(default_factory=list)
    unfinished: int = 0
    seconds: float = 0.0


def _z_range(block: Any) -> tuple[int, int]:
    z0 = int(block.write_roi.offset[0])
    return z0, z0 + int(block.write_roi.shape[0])


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
) -> BlockwiseOutcome:
    """Run ``worker`` in ``workers`` processes until every block of ``plan`` is done or failed.

    Args:
        plan: the z blocks; daisy's total ROI is the volume grown by the halo, its write ROI
            one block, its read ROI the block grown by the halo (shrunk at the volume's end).
        worker: a picklable zero-argument callable run in each worker process: it connects a
            ``daisy.Client`` and processes blocks until none is left.
        workers: the number of worker processes.
        tracking_dir: daisy's done markers and failure counts (kept across runs: a rerun
            skips the blocks recorded there).
        log_dir: per-worker logs (``worker_<id>.out`` / ``.err``).
        max_retries: attempts after the first before a block counts as failed.
        block_timeout_s: preempt (kill and retry) a block running longer.
        progress: daisy's live progress bar and its summary at the end.
        skip: one flag per block (plan order): ``True`` = not this run, not recorded as done.
        host: the scheduler address the workers connect to (``None``: daisy detects it).

    Returns:
        The counts and the failed blocks' z ranges (the caller decides what failure means).

    Raises:
        BlockwiseError: the workers kept dying (daisy abandoned the task), with daisy's reason.
    """
    daisy = import_daisy()
    tracking_dir, log_dir = Path(tracking_dir), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    daisy.logging.set_log_basedir(str(log_dir))
    halo, size = int(plan.halo), int(plan.block_slices)
    mask = None if skip is None else np.asarray(skip, dtype=bool)
    task = daisy.Task(
        TASK_ID,
        total_roi=daisy.Roi((-halo,), (int(plan.depth) + 2 * halo,)),
        read_roi=daisy.Roi((-halo,), (size + 2 * halo,)),
        write_roi=daisy.Roi((0,), (size,)),
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
        states = daisy.run_blockwise(
            [task], progress=progress, summary=progress, return_states=True, host=host
        )
    except RuntimeError as err:  # abandonment: the worker restart cap was exhausted
        raise BlockwiseError(f"blockwise prediction abandoned: {err}") from err
    seconds = time.perf_counter() - start
    state = states[TASK_ID]
    return BlockwiseOutcome(
        total=int(state.total_block_count),
        completed=int(state.completed_count) - int(state.skipped_count),
        skipped=int(state.skipped_count),
        failed=sorted(_z_range(block) for block in task.failed_blocks()),
        unfinished=int(state.total_block_count) - int(state.completed_count),
        seconds=seconds,
    )
