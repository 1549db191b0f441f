"""SLURM workers: each of daisy's worker slots runs one emseg worker as an ``srun`` job.

With ``blockwise.launcher=slurm`` the scheduler stays on the machine where ``predict.py`` runs
(a login node or a job of its own) and daisy calls :class:`SrunWorker` once per worker slot: it
runs ``srun <resources> python -m emseg.blockwise.worker <run dir>/worker.json`` and waits for it.
``srun`` outside an allocation asks SLURM for one (one task, ``cpus_per_worker`` cores,
``gpus_per_worker`` GPUs, ``time``, ``partition``, ``mem``) and starts the worker there; the
worker inherits ``DAISY_CONTEXT`` (srun exports the environment) and connects back to the
scheduler over TCP, so the compute nodes must reach the scheduler's host (``slurm.host`` when
daisy cannot tell which address they see) and share the file system with it (the checkpoint,
the input and the store).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emseg.errors import ConfigError

__all__ = ["SlurmSettings", "SrunWorker", "srun_command"]


@dataclass(frozen=True)
class SlurmSettings:
    """The ``blockwise.slurm`` block: resources of each worker's job.

    Attributes:
        partition: ``--partition`` (``None``: the cluster's default).
        time: ``--time`` of each worker job (it runs until no block is left).
        cpus_per_worker: ``--cpus-per-task``, also the worker's torch threads on a CPU node.
        gpus_per_worker: ``--gpus-per-task`` (0: a CPU worker).
        mem: ``--mem`` (``None``: the partition's default).
        srun_args: further ``srun`` options, verbatim (``--account=...``, ``--qos=...``).
        host: the address the workers connect to (``None``: daisy detects it).
    """

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_worker: int = 8
    gpus_per_worker: int = 1
    mem: str | None = None
    srun_args: Sequence[str] = field(default_factory=list)
    host: str | None = None

    def __post_init__(self) -> None:
        if int(self.cpus_per_worker) < 1 or int(self.gpus_per_worker) < 0:
            raise ConfigError(
                "blockwise.slurm.cpus_per_worker must be >= 1 and gpus_per_worker >= 0, got "
                f"{self.cpus_per_worker} and {self.gpus_per_worker}"
            )
        object.__setattr__(self, "srun_args", [str(a) for a in self.srun_args])

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> SlurmSettings:
        """From ``cfg.blockwise.slurm`` (unknown keys are an error naming them)."""
        values = dict(block or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"blockwise.slurm: unknown key(s) {', '.join(unknown)}")
        return cls(**values)


def srun_command(settings: SlurmSettings, spec: Path, python: str = sys.executable) -> list[str]:
    """The command that starts one worker as a SLURM job (see the module docstring)."""
    command = ["srun", "--ntasks=1", f"--cpus-per-task={int(settings.cpus_per_worker)}"]
    command += [f"--time={settings.time}", "--job-name=emseg-predict"]
    if int(settings.gpus_per_worker):
        command.append(f"--gpus-per-task={int(settings.gpus_per_worker)}")
    if settings.partition:
        command.append(f"--partition={settings.partition}")
    if settings.mem:
        command.append(f"--mem={settings.mem}")
    return [*command, *settings.srun_args, python, "-m", "emseg.blockwise.worker", str(spec)]


@dataclass
class SrunWorker:
    """daisy's worker function for SLURM: run one worker job and wait for it to end.

    Attributes:
        command: the :func:`srun_command` to run.
    """

    command: Sequence[str]

    def __call__(self) -> None:
        done = subprocess.run(list(self.command), check=False)
        if done.returncode:
            raise RuntimeError(
                f"worker job exited with code {done.returncode}: {' '.join(self.command)}"
            )
