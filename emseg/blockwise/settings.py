"""The ``blockwise`` block of conf/predict.yaml, validated: workers, blocks, chunks, retries."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emseg.blockwise.slurm import SlurmSettings
from emseg.errors import ConfigError
from emseg.io.prediction_store import ARRAY_NAMES, DEFAULT_CHUNKS

__all__ = ["LAUNCHERS", "BlockwiseSettings", "available_cpus"]

# Where the workers run: processes on this machine, or one SLURM job each.
LAUNCHERS = ("local", "slurm")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BlockwiseSettings:
    """How a blockwise prediction runs (``predict.py output=<store>.zarr blockwise.*=...``).

    Attributes:
        workers: local worker processes; each loads the model once and takes one GPU
            (``CUDA_VISIBLE_DEVICES``) when there are GPUs, else ``cpus // workers`` threads.
        block_slices: output slices per block (a multiple of ``chunks[0]``, at least the
            halo: a thinner block would read more context than it writes).
        block_yx: the blocks' y / x size: ``auto`` (whole slices up to 4096 x 4096 pixels,
            else 2048 x 2048 tiles), ``None`` (whole slices), a size or ``[y, x]``; rounded up
            to the chunks (:func:`~emseg.blockwise.plan.block_yx_of`).
        chunks: ``(z, y, x)`` chunk shape of the output arrays.
        pyramid: downsampled levels written beside level 0 (``probabilities/1``...), each
            the 2 x 2 mean in y and x of the one before, by the block's own worker (for
            viewing; the chunks' y / x sizes must be multiples of ``2 ** pyramid``).
        arrays: what the store holds: ``probabilities`` (as ``output_dtype``) and / or
            ``mask`` (uint8 0 / 255 above the threshold).
        max_retries: attempts after the first before a block counts as failed.
        block_timeout_s: a worker still on one block after this long is killed and the block
            retried (daisy's preemption).
        launcher: ``local`` (worker processes on this machine) or ``slurm`` (each worker an
            ``srun`` job: :mod:`emseg.blockwise.slurm`).
        slurm: the ``blockwise.slurm`` block (:class:`~emseg.blockwise.slurm.SlurmSettings`).
        dry_run: print the block count, halo, one block's time and memory and the estimated
            wall time, and write nothing (:mod:`emseg.blockwise.dry_run`).
    """

    workers: int = 1
    block_slices: int = 16
    block_yx: Any = "auto"
    pyramid: int = 0
    chunks: Sequence[int] = DEFAULT_CHUNKS
    arrays: Sequence[str] = field(default_factory=lambda: list(ARRAY_NAMES))
    max_retries: int = 2
    block_timeout_s: float = 3600.0
    launcher: str = "local"
    slurm: Any = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(
                f"blockwise.launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}"
            )
        if not isinstance(self.slurm, SlurmSettings):
            object.__setattr__(self, "slurm", SlurmSettings.from_config(self.slurm))
        if isinstance(self.pyramid, bool) or not isinstance(self.pyramid, int) or self.pyramid < 0:
            raise ConfigError(f"blockwise.pyramid must be an integer >= 0, got {self.pyramid!r}")
        for key in ("workers", "block_slices"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ConfigError(f"blockwise.{key} must be a positive integer, got {value!r}")
        if int(self.max_retries) < 0:
            raise ConfigError(f"blockwise.max_retries must be >= 0, got {self.max_retries}")
        if not float(self.block_timeout_s) > 0:
            raise ConfigError(
                f"blockwise.block_timeout_s must be positive seconds, got {self.block_timeout_s}"
            )
        arrays = [str(a) for a in self.arrays]
        if not arrays or set(arrays) - set(ARRAY_NAMES) or len(set(arrays)) != len(arrays):
            raise ConfigError(
                f"blockwise.arrays must be some of {', '.join(ARRAY_NAMES)}, got {arrays}"
            )
        object.__setattr__(self, "arrays", arrays)
        object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> BlockwiseSettings:
        """From ``cfg.blockwise`` (unknown keys are an error naming them)."""
        values = dict(block or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"blockwise: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def threads_per_worker(self, cpus: int | None = None) -> int:
        """torch intra-op threads of each CPU worker: an equal share of the cores."""
        return max(1, (cpus or available_cpus()) // int(self.workers))
