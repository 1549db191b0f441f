"""Training step time: the emseg LightningModule under ``lightning.Trainer`` against a plain loop.

Both run the same network (built by the same Hydra config), loss, optimizer, precision and
memory layout on the same pre-drawn batches held in memory, so the difference is what
Lightning (and emseg's per-step metrics and logging) add per step. A step is measured from one
iteration's start to the next's, i.e. including everything the loop does between batches.
The plain loop runs before and after the Lightning run and both blocks are pooled, so a drift
in machine speed cannot masquerade as framework overhead.

Also here: FLOPs of one step (``FlopCounterMode``), the precision / memory-layout grid on the
plain loop, a ``torch.profiler`` table of the top ops, and the Trainer fed by the real
DataModule loader (workers included) to show whether data loading slows the steps.

On a CUDA device (``device="cuda"``, what ``benchmarks/gpu_check`` measures) the plain loop copies
each batch from pinned host memory as a training loop does, and both loops wait for the GPU once
per step (``torch.cuda.synchronize``), so that a step's time is the GPU's, not the time to queue
its kernels; the forward / backward / optimizer phases are then not timed separately.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from itertools import cycle, islice
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench.common import log, summary
from emseg.metrics import segmentation_metrics
from emseg.train import build

__all__ = [
    "PRECISION_GRID",
    "StepTimer",
    "compare_loops",
    "configured_layout",
    "draw_batches",
    "lightning_steps",
    "matmul_peak",
    "optimizer_implementations",
    "plain_steps",
    "precision_grid",
    "profile_steps",
    "step_flops",
]

Batch = tuple[torch.Tensor, torch.Tensor]
# (Lightning precision, channels_last)
Layout = tuple[str, bool]
# (precision, channels_last) pairs compared on the plain loop.
PRECISION_GRID: tuple[tuple[str, bool], ...] = (
    ("32-true", False),
    ("32-true", True),
    ("bf16-mixed", False),
    ("bf16-mixed", True),
)


def _sync(device: torch.device) -> None:
    """Wait for the queued kernels of a CUDA ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall-clock time of every training iteration, start to next start (the last: to its end).

    On a CUDA module every mark first waits for the GPU (see the module docstring).
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.end = time.perf_counter()

    def seconds(self) -> list[float]:
        marks = [*self.starts, self.end]
        return [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]


def draw_batches(cfg: DictConfig, count: int) -> list[Batch]:
    """``count`` training batches of the configured DataModule (augmented, seeded), in memory."""
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    batches = [next(iterator) for _ in range(count)]
    del iterator
    return batches


def _autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    if precision.startswith("bf16"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()


def configured_layout(cfg: DictConfig) -> Layout:
    """The precision and memory layout the Trainer and module of :func:`emseg.train.build`
    train in with ``cfg`` (what ``auto`` resolved to on this machine)."""
    _, module, trainer = build(cfg)
    return str(trainer.precision), bool(module.hparams.channels_last)


def _with_implementation(optimizer: torch.optim.Optimizer, **options: Any) -> torch.optim.Optimizer:
    """The same optimizer (class, parameter groups, hyper-parameters) with other constructor
    options, e.g. ``fused=True``: the same maths by another kernel."""
    groups = [{k: v for k, v in g.items() if k not in options} for g in optimizer.param_groups]
    return type(optimizer)(groups, **{**optimizer.defaults, **options})


def _plain_parts(
    cfg: DictConfig,
    channels_last: bool,
    optimizer_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Any, torch.optim.Optimizer]:
    """Network, loss and optimizer of the LightningModule :func:`emseg.train.build` makes from
    ``cfg`` (the optimizer from its ``configure_optimizers``), in the given memory layout, on
    ``device``.

    Args:
        optimizer_kwargs: other optimizer options, e.g. ``fused=True``, for comparison.
    """
    L.seed_everything(int(cfg.seed), verbose=False)
    _, module, _ = build(cfg)
    module.to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = module.net.to(memory_format=layout)
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    if optimizer_kwargs:
        optimizer = _with_implementation(optimizer, **optimizer_kwargs)
    return net.train(), module.loss, optimizer


def plain_steps(
    cfg: DictConfig,
    batches: list[Batch],
    steps: int,
    warmup: int,
    precision: str,
    channels_last: bool,
    with_metrics: bool = False,
    parts: tuple | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The hand-written loop: forward (autocast), loss, zero_grad, backward, step.

    Args:
        with_metrics: also do the per-step work of emseg's ``training_step`` beyond the loss
            (sigmoid + torchmetrics update), to tell emseg's cost from Lightning's.
        parts: ``(net, loss, optimizer)`` to continue training (default: fresh ones), on
            ``device``.
        optimizer_kwargs: extra optimizer arguments (``foreach``/``fused`` implementations).
        device: where to train; each host batch is copied there every step (from pinned
            memory on CUDA, as a DataLoader with ``pin_memory`` delivers it).

    Returns:
        ``{"step_s": summary, "phases_s": {forward, backward, optimizer}: medians}`` (phases
        ``NaN`` on CUDA: they are not timed separately there).
    """
    device = torch.device(device)
    net, loss_fn, optimizer = parts or _plain_parts(cfg, channels_last, optimizer_kwargs, device)
    metrics = segmentation_metrics().clone(prefix="train/") if with_metrics else None
    if metrics is not None:
        metrics = metrics.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    cuda = device.type == "cuda"
    if cuda:
        batches = [(image.pin_memory(), target.pin_memory()) for image, target in batches]
    times: list[float] = []
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    _sync(device)
    last = time.perf_counter()
    for index, (image, target) in enumerate(islice(cycle(batches), warmup + steps)):
        image = image.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        t0 = time.perf_counter()
        with _autocast(precision, device.type):
            logits = net(image).float()
            loss = loss_fn(logits, target)
        if metrics is not None:
            if not torch.isfinite(loss):
                raise RuntimeError("loss is not finite")
            metrics.update(torch.sigmoid(logits.detach()), target.long())
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        _sync(device)
        t3 = time.perf_counter()
        if index >= warmup:
            times.append(t3 - last)
            if not cuda:
                phases["forward"].append(t1 - t0)
                phases["backward"].append(t2 - t1)
                phases["optimizer"].append(t3 - t2)
        last = t3
    return {
        "times": times,
        "step_s": summary(times),
        "phases_s": {k: summary(v)["median"] for k, v in phases.items()},
        "parts": (net, loss_fn, optimizer),
    }


class _InMemory(torch.utils.data.Dataset):
    def __init__(self, batches: list[Batch], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Batch:
        return self.batches[index % len(self.batches)]


def lightning_steps(
    cfg: DictConfig,
    steps: int,
    warmup: int,
    batches: list[Batch] | None = None,
) -> dict[str, Any]:
    """The emseg LightningModule under the configured ``lightning.Trainer``.

    Built by :func:`emseg.train.build` from ``cfg`` (callbacks, logger, precision plugin and
    all); only validation and checkpointing are switched off by the caller's overrides, since
    they happen once per epoch, not per step.

    Args:
        batches: train on these in-memory batches; ``None``: on the DataModule's own loader
            (its worker processes compete with the step for the cores).
    """
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule, module, trainer = build(cfg)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    # Lightning's summaries and progress bar go to stderr: stdout carries only the report.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_dataloader.*")
        if batches is None:
            trainer.fit(module, datamodule=datamodule)
        else:
            pin = trainer.strategy.root_device.type == "cuda"
            loader = DataLoader(_InMemory(batches, warmup + steps), batch_size=None, pin_memory=pin)
            trainer.fit(module, train_dataloaders=loader)
    seconds = timer.seconds()
    return {
        "step_s": summary(seconds[warmup:]),
        "steps_run": len(seconds),
        "precision": str(trainer.precision),
        "channels_last": bool(module.hparams.channels_last),
        "callbacks": [type(c).__name__ for c in trainer.callbacks],
    }


def step_flops(
    cfg: DictConfig, batch: Batch, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """FLOPs of one training step (forward + backward; the optimizer's are negligible).

    Counted in float32 with ``torch.utils.flop_counter.FlopCounterMode`` (the count does not
    depend on the dtype, and is proportional to the batch: count on a small one).
    """
    net, loss_fn, _ = _plain_parts(cfg, channels_last=False, device=device)
    image, target = (tensor.to(device) for tensor in batch)
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(image), target).backward()
    total = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(image)
        forward_only = counter.get_total_flops()
    return {
        "step_flops": float(total),
        "forward_flops": float(forward_only),
        "images": int(image.shape[0]),
        "gflop_per_image_step": total / image.shape[0] / 1e9,
    }


def profile_steps(
    cfg: DictConfig,
    batches: list[Batch],
    steps: int,
    precision: str,
    channels_last: bool,
    row_limit: int = 20,
) -> str:
    """``torch.profiler`` table (top ops by self CPU time) of ``steps`` plain-loop steps."""
    from torch.profiler import ProfilerActivity, profile

    parts = plain_steps(cfg, batches, 0, 2, precision, channels_last)["parts"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        plain_steps(cfg, batches, steps, 0, precision, channels_last, parts=parts)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def matmul_peak(
    size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """GFLOP/s of a large matrix product in fp32 and bf16: what this CPU (or GPU) can reach on
    dense maths, a ceiling to read the network's GFLOP/s against (fp32 as the process's
    ``float32_matmul_precision`` allows: TF32 on CUDA under "high")."""
    device = torch.device(device)
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        result[f"matmul_{name}_gflops"] = 2 * size**3 / min(times) / 1e9
    return result


def precision_grid(
    cfg: DictConfig,
    batches: list[Batch],
    steps: int,
    warmup: int,
    layout: Layout,
    auto: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Plain-loop step time of every :data:`PRECISION_GRID` entry; the configured ``layout``'s
    is ``auto``, already measured."""
    precision, channels_last = layout
    grid = {}
    for grid_precision, grid_cl in PRECISION_GRID:
        key = f"{grid_precision}{'+channels_last' if grid_cl else ''}"
        if (grid_precision, grid_cl) == (precision, channels_last):
            grid[key] = {"step_s": auto, "auto": True}
            continue
        log(f"training: precision grid {key}")
        result = plain_steps(cfg, batches, steps, warmup, grid_precision, grid_cl)
        grid[key] = {"step_s": result["step_s"], "auto": False}
    return grid


def optimizer_implementations(
    cfg: DictConfig, batches: list[Batch], steps: int, warmup: int, layout: Layout
) -> dict[str, dict[str, Any]]:
    """Plain-loop step time with the optimizer's multi-tensor (``foreach``) and ``fused``
    kernels: the configured optimizer runs torch's default CPU implementation, a Python loop
    over the parameters, and these do the same maths."""
    precision, channels_last = layout
    optimizers: dict[str, dict[str, Any]] = {}
    for name, kwargs in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        log(f"training: optimizer implementation {name}")
        try:
            result = plain_steps(
                cfg, batches, steps, warmup, precision, channels_last, optimizer_kwargs=kwargs
            )
        except (RuntimeError, TypeError, ValueError) as err:  # optimizer without that option
            optimizers[name] = {"error": str(err)}
            continue
        optimizers[name] = {"step_s": result["step_s"], "phases_s": result["phases_s"]}
    return optimizers


def compare_loops(
    cfg: DictConfig,
    real_loader_cfg: DictConfig,
    batches: list[Batch],
    steps: int,
    warmup: int,
    layout: Layout,
) -> dict[str, Any]:
    """The plain loop (before and after, pooled), the Trainer on the same in-memory batches,
    the plain loop with emseg's per-step metrics, and the Trainer on the DataModule's loader."""
    precision, channels_last = layout
    log("training: plain loop (block A)")
    first = plain_steps(cfg, batches, steps, warmup, precision, channels_last)
    log("training: Lightning Trainer")
    lightning = lightning_steps(cfg, steps, warmup, batches)
    log("training: plain loop (block B)")
    second = plain_steps(cfg, batches, steps, warmup, precision, channels_last)
    log("training: plain loop + emseg's per-step metrics")
    with_metrics = plain_steps(cfg, batches, steps, warmup, precision, channels_last, True)
    log("training: Lightning Trainer on the DataModule's own loader")
    real = lightning_steps(real_loader_cfg, steps, warmup, None)
    plain = summary(first["times"] + second["times"])
    return {
        "plain": {"step_s": plain, "phases_s": first["phases_s"]},
        "plain_with_metrics": {"step_s": with_metrics["step_s"]},
        "lightning": lightning,
        "lightning_ratio": lightning["step_s"]["median"] / plain["median"],
        "lightning_ratio_vs_plain_with_metrics": lightning["step_s"]["median"]
        / with_metrics["step_s"]["median"],
        "lightning_real_loader": real,
        "real_loader_ratio": real["step_s"]["median"] / lightning["step_s"]["median"],
    }


def run(
    cfg: DictConfig,
    real_loader_cfg: DictConfig,
    steps: int,
    warmup: int,
    grid_steps: int,
    profile_n: int,
) -> dict[str, Any]:
    """The whole training section (see the module docstring)."""
    layout = configured_layout(cfg)
    precision, channels_last = layout
    batches = draw_batches(cfg, min(warmup + steps, 16))
    log(f"training: {len(batches)} batches of {tuple(batches[0][0].shape)}, {precision}")
    flops = step_flops(cfg, batches[0])
    loops = compare_loops(cfg, real_loader_cfg, batches, steps, warmup, layout)
    plain, lightning = loops["plain"]["step_s"], loops["lightning"]["step_s"]
    grid = precision_grid(cfg, batches, grid_steps, min(warmup, 3), layout, plain)
    fastest = min(grid, key=lambda k: grid[k]["step_s"]["median"])
    optimizers = optimizer_implementations(cfg, batches, grid_steps, min(warmup, 3), layout)
    log("training: profile")
    table = profile_steps(cfg, batches, profile_n, precision, channels_last)
    return {
        "batch_shape": list(batches[0][0].shape),
        "precision": precision,
        "channels_last": channels_last,
        "warmup_steps": warmup,
        **loops,
        "flops": flops,
        "gflops_plain": flops["step_flops"] / plain["median"] / 1e9,
        "gflops_lightning": flops["step_flops"] / lightning["median"] / 1e9,
        "seconds_per_image": lightning["median"] / int(batches[0][0].shape[0]),
        "precision_grid": grid,
        "fastest": fastest,
        "optimizer_implementations": optimizers,
        "auto_is_fastest": grid[fastest].get("auto", False),
        "profile_table": table,
        **matmul_peak(),
    }


def bench_overrides(quick: bool, steps: int) -> list[str]:
    """Overrides of the timed Trainer runs: one epoch of ``steps`` steps, no validation, no
    checkpoint files (both happen once per epoch, not per step)."""
    overrides = [
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks.model_checkpoint=null",
        "test_after_fit=false",
    ]
    if quick:
        overrides += [
            "data.patch_size=64",
            "data.batch_size=2",
            "data.val_slices=2",
            "data.samples_per_epoch=64",
        ]
    return overrides
