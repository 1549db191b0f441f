"""``blockwise.dry_run=true``: what a blockwise run would do and cost, from one timed block.

Nothing is written (no store, no lock, no run directory). The middle block of the plan is
predicted here, on the threads a CPU worker would get (or this machine's first GPU), which
gives the seconds per block and the peak memory of a process holding the model and one block:
what each worker needs. The wall-time estimate is ``ceil(blocks / workers)`` such blocks; the
workers' start-up (imports and checkpoint, a few seconds each) comes on top, and the timed
block includes the first forward pass's warm-up, so it errs long.
"""

from __future__ import annotations

import math
import resource
import time
from typing import Any

import torch

from emseg.blockwise.engine import format_block
from emseg.blockwise.plan import BlockPlan
from emseg.io.encoding import probabilities_as

__all__ = ["dry_run", "format_dry_run"]


def dry_run(
    pipeline: Any, source: Any, plan: BlockPlan, workers: int, threads: int | None, dtype: str
) -> dict[str, Any]:
    """Time the plan's middle block and estimate the run (see the module docstring).

    Args:
        pipeline: the :class:`~emseg.inference.InferencePipeline` the workers would build.
        source: the ``(Z, Y, X)`` input.
        plan: the blocks.
        workers: how many workers would run.
        threads: torch threads of a CPU worker (``None``: keep this process's).
        dtype: how probabilities would be stored.

    Returns:
        Blocks, block and read slices, halo, seconds of the timed block, the estimated wall
        seconds, and the peak RSS of this process in MiB.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    blocks = list(plan)
    box = blocks[len(blocks) // 2]
    z0, z1, y0, y1, x0, x1 = box
    _, height, width = source.shape
    region = None if (y0, y1, x0, x1) == (0, height, 0, width) else ((y0, y1), (x0, x1))
    start = time.perf_counter()
    probabilities_as(pipeline.block_probabilities(source, z0, z1, region), dtype)
    seconds = time.perf_counter() - start
    r0, r1 = plan.read_range(z0, z1)
    return {
        "blocks": len(blocks),
        "block_shape": list(plan.block_shape),
        "halo": plan.halo,
        "timed_block": list(box),
        "read_slices": r1 - r0,
        "block_seconds": seconds,
        "workers": int(workers),
        "estimated_seconds": math.ceil(len(blocks) / int(workers)) * seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def format_dry_run(report: dict[str, Any]) -> str:
    """The dry run's report as two lines."""
    box = format_block(tuple(report["timed_block"]))
    return (
        f"dry run: {report['blocks']} blocks of {'x'.join(map(str, report['block_shape']))} "
        f"voxels, z halo {report['halo']} (block {box} reads {report['read_slices']} slices), "
        f"{report['workers']} worker(s)\n"
        f"dry run: {report['block_seconds']:.2f} s per block (timed here), estimated "
        f"{report['estimated_seconds'] / 60:.1f} min plus worker start-up; peak memory per "
        f"worker ~{report['peak_rss_mib']:.0f} MiB (this process: model + one block)"
    )
