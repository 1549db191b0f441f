"""Shared behaviour of the command-line entry points (train.py, eval.py, predict.py, ...)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from emseg.errors import find_user_error

__all__ = ["run_or_exit"]

T = TypeVar("T")


def run_or_exit(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``task(cfg)``; a user error prints one ``error: ...`` line and exits with code 2.

    A user error is an :class:`~emseg.errors.EmsegError` anywhere in the exception's cause
    chain (Hydra's ``instantiate`` wraps constructor errors). Anything else is a bug and keeps
    its traceback, as does every error when ``HYDRA_FULL_ERROR=1``.
    """
    try:
        return task(cfg)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
