"""Atomic checkpoint writes: a killed run never leaves a truncated ``last.ckpt`` behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from emseg.atomic import temporary_sibling

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing to a temporary name and renaming at the end.

    ``os.replace`` is atomic on POSIX file systems, so readers (and a resumed run) see either
    the previous complete checkpoint or the new complete one.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        tmp = temporary_sibling(path)
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
