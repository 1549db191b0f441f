"""Section (c) of the GPU check: training speed of the ``experiment=gpu`` network on the GPU.

For each batch size: the emseg LightningModule under the configured Trainer against the plain
PyTorch loop on the same in-memory batches (:mod:`benchmarks.bench.training`, the code of
``make bench``, here with ``device="cuda"``), the plain loop run before and after the Trainer
and pooled; images/s; model FLOP utilisation (MFU) = FLOPs per image-step x images/s against
the GPU's bf16 peak, both the peak measured here (a large bf16 matrix product) and the
datasheet's dense bf16 figure where the GPU is one of :data:`DATASHEET_BF16_FLOPS`. Then
``torch.compile`` of the plain loop at one batch size (compile seconds, compiled / eager step).

:func:`recipe_rate`: at the recipe's own batch size, the Trainer on the real DataModule loader
(its workers included) and the loader's own samples/s against the samples/s the GPU consumes;
the experiment section sizes its epochs from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from benchmarks.bench.common import log, summary
from benchmarks.bench.pipeline import loader_throughput
from benchmarks.bench.training import (
    draw_batches,
    lightning_steps,
    matmul_peak,
    plain_steps,
    step_flops,
)

__all__ = ["DATASHEET_BF16_FLOPS", "datasheet_peak", "measure", "recipe_rate"]

# Dense (no sparsity) bf16 tensor-core FLOP/s from NVIDIA's datasheets, by a substring of
# torch.cuda.get_device_name(). SXM parts; a PCIe / NVL card is slower, so MFU against the
# measured peak is the figure to read first.
DATASHEET_BF16_FLOPS: dict[str, float] = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
}


def datasheet_peak(name: str | None) -> float | None:
    """The datasheet's dense bf16 FLOP/s of the GPU called ``name`` (``None``: not listed)."""
    for key, flops in DATASHEET_BF16_FLOPS.items():
        if name and key in name:
            return flops
    return None


def _gpu_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _batch_size(
    cfg: DictConfig,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    flops_per_image: float,
    peaks: dict[str, float | None],
) -> dict[str, Any]:
    """Plain loop (A), Trainer, plain loop (B) at one batch size."""
    precision, channels_last = str(cfg.trainer.precision), bool(cfg.module.channels_last)
    batches = draw_batches(cfg, min(warmup + steps, 8))
    log(f"speed: batch {batch}: plain loop (block A)")
    first = plain_steps(cfg, batches, steps, warmup, precision, channels_last, device=device)
    del first["parts"]
    log(f"speed: batch {batch}: Lightning Trainer")
    lightning = lightning_steps(cfg, steps, warmup, batches)
    log(f"speed: batch {batch}: plain loop (block B)")
    second = plain_steps(cfg, batches, steps, warmup, precision, channels_last, device=device)
    del second["parts"]
    plain = summary(first["times"] + second["times"])
    images_per_s = batch / lightning["step_s"]["median"]
    plain_images_per_s = batch / plain["median"]
    result: dict[str, Any] = {
        "batch_size": batch,
        "precision": precision,
        "channels_last": channels_last,
        "plain": {"step_s": plain},
        "lightning": lightning,
        "lightning_ratio": lightning["step_s"]["median"] / plain["median"],
        "images_per_s": images_per_s,
        "plain_images_per_s": plain_images_per_s,
        "tflops_lightning": flops_per_image * images_per_s / 1e12,
        "tflops_plain": flops_per_image * plain_images_per_s / 1e12,
        "peak_gpu_memory_gib": _gpu_memory(device),
    }
    for name, peak in peaks.items():
        if peak:
            result[f"mfu_{name}"] = flops_per_image * images_per_s / peak
            result[f"mfu_{name}_plain"] = flops_per_image * plain_images_per_s / peak
    return result


def _compiled(
    cfg: DictConfig, steps: int, warmup: int, device: torch.device, backend: str
) -> dict[str, Any]:
    """Eager against ``torch.compile``d plain loop, same parts and batches; compile seconds =
    the first compiled step(s) less an eager step."""
    precision, channels_last = str(cfg.trainer.precision), bool(cfg.module.channels_last)
    batches = draw_batches(cfg, min(warmup + steps, 8))
    eager = plain_steps(cfg, batches, steps, warmup, precision, channels_last, device=device)
    net, loss, optimizer = eager.pop("parts")
    compiled_net = torch.compile(net, backend=backend)
    parts = (compiled_net, loss, optimizer)
    t0 = time.perf_counter()
    plain_steps(cfg, batches, 0, 2, precision, channels_last, parts=parts, device=device)
    first_s = time.perf_counter() - t0
    compiled = plain_steps(
        cfg, batches, steps, warmup, precision, channels_last, parts=parts, device=device
    )
    compiled.pop("parts")
    eager_s, compiled_s = eager["step_s"]["median"], compiled["step_s"]["median"]
    return {
        "batch_size": int(cfg.data.batch_size),
        "backend": backend,
        "eager_step_s": eager["step_s"],
        "compiled_step_s": compiled["step_s"],
        "compile_seconds": max(first_s - 2 * compiled_s, 0.0),
        "compiled_over_eager": compiled_s / eager_s,
        "helps": compiled_s < 0.95 * eager_s,
    }


def recipe_rate(cfg: DictConfig, steps: int, warmup: int, loader_batches: int) -> dict[str, Any]:
    """The Trainer on the configured DataModule's loader (its workers, pinned memory), then the
    loader alone: samples/s it delivers against the samples/s the training step consumes."""
    batch = int(cfg.data.batch_size)
    log(f"speed: batch {batch}: Trainer on the DataModule's loader, then the loader alone")
    real = lightning_steps(cfg, steps, warmup, None)
    loader = loader_throughput(cfg, loader_batches, min(warmup, 5))
    model_rate = batch / real["step_s"]["median"]
    return {
        "batch_size": batch,
        "num_workers": int(cfg.data.num_workers),
        "pin_memory": bool(cfg.data.pin_memory),
        "lightning": real,
        "images_per_s": model_rate,
        "loader": loader,
        "loader_over_model": loader["samples_per_s"] / model_rate,
    }


def measure(
    config_for: Callable[[int], DictConfig],
    *,
    batch_sizes: tuple[int, ...],
    steps: int,
    warmup: int,
    device: torch.device,
    matmul_size: int,
    compile_batch: int | None,
    compile_backend: str,
    time_left: Callable[[], float],
    min_seconds_per_batch: float,
    compile_min_seconds: float,
) -> dict[str, Any]:
    """The whole speed section (module docstring).

    Args:
        config_for: ``batch size -> config`` of a timed Trainer run on in-memory batches.
        time_left: seconds left of the section's allowance; a batch size is skipped (and
            recorded as such) when less than ``min_seconds_per_batch`` is left, compilation
            when less than ``compile_min_seconds``.
    """
    peaks: dict[str, float | None] = {}
    matmul = matmul_peak(matmul_size, 5, device)
    peaks["measured"] = matmul["matmul_bf16_gflops"] * 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peaks["datasheet"] = datasheet_peak(name)
    first_cfg = config_for(batch_sizes[0])
    sample = draw_batches(first_cfg, 1)[0]
    flops = step_flops(first_cfg, (sample[0][:1], sample[1][:1]), device)
    per_image = flops["step_flops"]
    results: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "matmul": matmul,
        "peak_flops": peaks,
        "flops_per_image_step": per_image,
        "gflop_per_image_step": per_image / 1e9,
        "steps": steps,
        "warmup": warmup,
        "batches": {},
    }
    for batch in batch_sizes:
        if time_left() < min_seconds_per_batch:
            results["batches"][str(batch)] = {"skipped": "time budget of the section spent"}
            continue
        results["batches"][str(batch)] = _batch_size(
            config_for(batch), batch, steps, warmup, device, per_image, peaks
        )
    if compile_batch is None:
        results["compile"] = {"skipped": "not asked for"}
    elif time_left() < compile_min_seconds:
        results["compile"] = {"skipped": "time budget of the section spent"}
    else:
        log(f"speed: batch {compile_batch}: torch.compile (backend {compile_backend})")
        results["compile"] = _compiled(
            config_for(compile_batch), steps, warmup, device, compile_backend
        )
    return results
