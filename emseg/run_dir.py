"""One training run per output directory, at any time and over its whole life.

Sweep jobs (joblib, SLURM arrays) run at the same time and re-launched sweeps reuse fixed
directories; two jobs that resolve to the same directory (duplicate overrides, a re-launched
sweep whose first launch still runs) would overwrite each other's checkpoints. A run therefore
claims its directory with a lock file created atomically (``O_CREAT | O_EXCL``), and a fresh run
refuses a directory that already holds another run's checkpoints or results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from emseg.errors import ConfigError

__all__ = ["LOCK_NAME", "claim_run_dir", "finished_metrics"]

log = logging.getLogger(__name__)

LOCK_NAME = ".emseg-run.lock"


def finished_metrics(output_dir: Path, resume: bool) -> dict | None:
    """The metrics of a finished run in ``output_dir`` when ``resume`` is set, else ``None``.

    ``metrics.json`` is written last and atomically, so its presence marks a complete run (a
    re-launched sweep with ``resume=true`` skips it).
    """
    done = Path(output_dir) / "metrics.json"
    if not resume or not done.is_file():
        return None
    log.info("%s exists: run already complete (resume=true), nothing to do", done)
    return json.loads(done.read_text())["metrics"]


def _holder_alive(lock: Path) -> tuple[bool, str]:
    """Whether the process named in ``lock`` still runs (on this host), and who it is."""
    try:
        holder = json.loads(lock.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, "unknown"  # half-written or corrupt: its writer is gone
    who = f"process {pid} on {host}"
    if host != socket.gethostname():
        return True, who  # cannot check another machine's processes: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, who
    except PermissionError:
        return True, who
    return True, who


def _previous_run(output_dir: Path) -> str | None:
    """What in ``output_dir`` a fresh run would overwrite, if anything."""
    if (output_dir / "metrics.json").is_file():
        return "metrics.json"
    checkpoints = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    return f"checkpoints/{checkpoints[0].name}" if checkpoints else None


@contextlib.contextmanager
def claim_run_dir(output_dir: Path, resuming: bool) -> Iterator[None]:
    """Hold ``output_dir`` for one run; raise :class:`ConfigError` if that would clobber another.

    Args:
        output_dir: the run directory (created by Hydra).
        resuming: the run continues the directory's own checkpoint (``resume=true`` or
            ``ckpt_path``), so existing checkpoints are expected.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            alive, who = _holder_alive(lock)
            if alive:
                raise ConfigError(
                    f"{output_dir} is in use by another training run ({who}); give this run "
                    "its own directory (hydra.run.dir=... or distinct sweep overrides)"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its run was killed
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(record)
        break
    else:
        raise ConfigError(f"{output_dir}: could not take the run lock {lock}")
    try:
        previous = None if resuming else _previous_run(output_dir)
        if previous is not None:
            raise ConfigError(
                f"{output_dir} already holds a training run ({previous}): pass resume=true to "
                "continue it, or train into a new directory"
            )
        yield
    finally:
        lock.unlink(missing_ok=True)
