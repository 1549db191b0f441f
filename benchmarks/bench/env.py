"""The hardware and software every timing was taken on (the issue asks each to name it)."""

from __future__ import annotations

import os
import platform
import resource
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from emseg.hardware import (
    auto_channels_last,
    auto_precision,
    cpu_has_native_bf16,
    cpu_model_name,
)
from emseg.records import git_commit, git_dirty

__all__ = [
    "bf16_cpu_flags",
    "environment",
    "machine_busy_seconds",
    "own_cpu_seconds",
    "peak_rss_bytes",
]


def bf16_cpu_flags() -> list[str]:
    """The bf16/AMX ISA flags /proc/cpuinfo lists (what makes bf16 native rather than emulated)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return []
    return sorted(f for f in flags if f in {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (/proc/stat: user, nice, system, irq,
    softirq, steal), to tell afterwards how much of the machine others used during the run."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (workers, subprocesses)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    Linux ``VmHWM`` (``/proc/self/status``) where it exists: ``ru_maxrss`` is not reset by
    ``exec``, so a worker started by a big parent would report the parent's peak. Elsewhere
    ``ru_maxrss`` (KiB on Linux).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def environment() -> dict[str, Any]:
    """CPU model, ISA capability, bf16 support, threads, devices and versions."""
    import lightning

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "native_bf16": cpu_has_native_bf16(),
        "bf16_cpu_flags": bf16_cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_bf16_supported": bool(torch.cuda.is_bf16_supported()) if cuda else None,
        "auto_precision_cpu": auto_precision("cpu"),
        "auto_channels_last_cpu": auto_channels_last(auto_precision("cpu"), "cpu"),
        "auto_precision_gpu": auto_precision("gpu") if cuda else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }
    return info
