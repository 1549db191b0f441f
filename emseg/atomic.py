"""Whole-or-nothing file writes: a killed process leaves the old file or the new one, never half.

``os.replace`` is atomic on POSIX file systems; writing to a temporary name in the same
directory first makes every reader (a resumed run, the report generator) see a complete file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["temporary_sibling", "write_json_atomic"]


def temporary_sibling(path: Path) -> Path:
    """A hidden name next to ``path`` unique to this process (same file system, so renamable)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file and a rename.

    ``metrics.json`` marks a finished run (``resume=true`` skips it): a run killed while writing
    it must leave no file or a whole one.
    """
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
