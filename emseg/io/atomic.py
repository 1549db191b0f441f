"""Whole-or-nothing file writes: a killed process leaves the old file or the new one, never half.

Every output emseg writes (metrics.json, checkpoints, TIFF / model files) goes through
:func:`atomic_paths`: the writer fills temporary siblings (same directory, hence same file
system) and ``os.replace`` renames them over the final names only when all are complete.
``os.replace`` is atomic on POSIX file systems, so readers (a resumed run, a report generator,
another tool) see either the previous complete file or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_paths", "temporary_sibling", "write_json_atomic"]


def temporary_sibling(path: Path, tag: str = "") -> Path:
    """A hidden name next to ``path`` unique to this process (same file system, so renamable).

    The file's suffix is kept (``.name.tmp-<pid><tag>.tif``) because some writers (tifffile,
    torch.onnx) choose the format from it.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{tag}{path.suffix}")


@contextlib.contextmanager
def atomic_paths(*paths: Path | str, tag: str = "") -> Iterator[list[Path]]:
    """Temporary siblings of ``paths``, renamed over them together when the block succeeds.

    On any exception inside the block every temporary file is deleted and the final files are
    left untouched (an existing output is only ever replaced by a complete new one).

    Args:
        paths: the final file names.
        tag: extra part of the temporary names (several temporaries of one output).

    Yields:
        The temporary names, in the order of ``paths``.
    """
    finals = [Path(p) for p in paths]
    tmps = [temporary_sibling(p, tag) for p in finals]
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path | str, tag: str = "") -> Iterator[Path]:
    """:func:`atomic_paths` for a single file."""
    with atomic_paths(path, tag=tag) as (tmp,):
        yield tmp


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically.

    ``metrics.json`` marks a finished run (``resume=true`` skips it): a run killed while writing
    it must leave no file or a whole one.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
