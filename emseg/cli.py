"""Shared behaviour of the command-line entry points (train.py, eval.py, predict.py, ...).

A user's mistake (a missing file, a bad shape, an unknown config key, a value out of range) must
end in one readable line and a non-zero exit, not in a traceback: :func:`launch` runs a
``@hydra.main`` function so that every such error, whether Hydra found it while composing the
config or emseg found it while running, is printed as ``error: <what and where>`` with exit
code 2. Anything else is a bug and keeps its full traceback. ``HYDRA_FULL_ERROR=1`` shows the
traceback of every error, as it does for Hydra itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

from hydra.errors import CompactHydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from emseg.errors import find_user_error

__all__ = [
    "USER_ERROR_EXIT_CODE",
    "launch",
    "one_line",
    "progress_bar",
    "run_or_exit",
    "user_message",
]

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2
# Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1), recorded by launch() before it
# sets HYDRA_FULL_ERROR for Hydra; inherited by processes started from this one (DDP).
_USER_FULL_ERROR = "EMSEG_USER_FULL_ERROR"


def _user_wants_traceback() -> bool:
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def _exit_with(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def one_line(text: str) -> str:
    """Join a multi-line library message into one line.

    Hydra lists alternatives as indented lines after a header ending in ``:`` ("Available
    options in 'loss':"); those become a comma-separated list after the header.
    """
    parts: list[str] = []
    listing = False
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line:
            continue
        if listing and raw[:1].isspace():
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
            continue
        listing = line.endswith(":")
        parts.append(line)
    out = parts[0] if parts else ""
    for part in parts[1:]:
        out = f"{out} {part}" if out.endswith(":") else f"{out.rstrip('.')}. {part}"
    return out


def user_message(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or ``None`` for a bug.

    User errors: an :class:`~emseg.errors.EmsegError` anywhere in the cause chain (Hydra's
    ``instantiate`` wraps constructor errors), Hydra's compact errors (unknown config group
    option or key, unparsable override, failed instantiation) and OmegaConf's (missing
    mandatory value, wrong type, failed interpolation).
    """
    emseg_error = find_user_error(error)
    if emseg_error is not None:
        return str(emseg_error)
    if isinstance(error, CompactHydraException):
        message = one_line(str(error))
        cause = error.__cause__
        if isinstance(cause, OmegaConfBaseException):
            message = f"{message.rstrip('.')}. {str(cause).splitlines()[0].strip()}"
        return message
    if isinstance(error, OmegaConfBaseException):
        return one_line(str(error))
    return None


def run_or_exit(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run the task of a Hydra job; a user error prints one ``error: ...`` line, exit 2.

    Handled inside the job (rather than only in :func:`launch`) because Hydra adds an "Error
    executing job with overrides" line to every exception that leaves a job.
    """
    try:
        return task(cfg)
    except Exception as err:
        message = user_message(err)
        if message is None or _user_wants_traceback():
            raise
        _exit_with(message)


def launch(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function; a user error prints one ``error: ...`` line, exit 2.

    Hydra prints its own errors (unknown config option or key, bad override) over several
    lines; ``HYDRA_FULL_ERROR=1`` makes it re-raise them instead, so that they are reported
    here in one line. The variable is restored afterwards.
    """
    previous = os.environ.get("HYDRA_FULL_ERROR")
    inherited = os.environ.get(_USER_FULL_ERROR)  # set when a parent emseg process launched us
    os.environ[_USER_FULL_ERROR] = inherited or ("1" if previous == "1" else "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return main()
    except Exception as err:
        message = user_message(err)
        if message is None or _user_wants_traceback():
            raise
        _exit_with(message)
    finally:
        if inherited is None:
            os.environ.pop(_USER_FULL_ERROR, None)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def progress_bar(
    items: Iterable[T], total: int, description: str, enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while showing slices done / total, elapsed time and ETA on stderr.

    On a terminal this is a live bar; otherwise (``nohup``, SLURM, CI logs, where a live bar
    draws nothing) one log line at every tenth of the total.
    """
    if not enabled:
        yield from items
        return
    if not sys.stderr.isatty():
        yield from _logged_progress(items, total, description)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slices"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _logged_progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """:func:`progress_bar` for logs: ``<description>: 33/165 slices, 1m02s, ETA 4m08s``."""
    import logging
    import time

    log = logging.getLogger("emseg.progress")
    start = time.perf_counter()
    step = max(1, total // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * max(total - done, 0)
            log.info(
                "%s: %d/%d slices, %.0f s elapsed, ETA %.0f s",
                description,
                done,
                total,
                elapsed,
                eta,
            )
