"""Atomic checkpoint writes: a killed run never leaves a truncated ``last.ckpt`` behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from emseg.io.atomic import atomic_path

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing through :func:`emseg.io.atomic.atomic_path`.

    Readers (and a resumed run) see either the previous complete checkpoint or the new one.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
