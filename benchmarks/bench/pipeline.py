"""Data pipeline: samples/s the DataModule's training loader delivers with its configured
workers, to compare with the samples/s the model consumes (batch size / step time).

Measured with nothing else running, so this is the loader's capacity; whether the workers slow
the training step when they share the cores with it is measured in :mod:`benchmarks.bench.training`
(the Trainer on the real loader against the Trainer on in-memory batches).
"""

from __future__ import annotations

import gc
import time
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["loader_throughput"]


def loader_throughput(cfg: DictConfig, batches: int, warmup: int) -> dict[str, Any]:
    """Time ``batches`` batches of ``EMDataModule.train_dataloader()`` after ``warmup``.

    Returns:
        samples/s after warm-up, seconds to the first batch (volume already loaded: worker
        start-up), the worker count and the batch size.
    """
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate(cfg.data)
    t0 = time.perf_counter()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = datamodule.train_dataloader()
    t0 = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        next(iterator)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - t0
    del iterator, loader
    gc.collect()
    batch_size = int(cfg.data.batch_size)
    return {
        "num_workers": int(cfg.data.num_workers),
        "batch_size": batch_size,
        "batches": batches,
        "setup_s": setup_s,
        "first_batch_s": first_s,
        "samples_per_s": batches * batch_size / seconds,
    }
