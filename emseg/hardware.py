"""Pick precision and memory layout from the hardware, never from assumptions.

Why: on CPUs with native bf16 (AVX-512 BF16 / AMX) bf16 autocast is about 2x faster than fp32,
while on AVX2-only CPUs one bf16 step is ~100x slower than fp32. On those CPUs channels_last
also slows fp32 down. CUDA GPUs get bf16 where the device supports it, fp16 otherwise.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix maths natively (AVX-512 BF16 or AMX).

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is also true on plain AVX-512 CPUs, where
    oneDNN emulates bf16; the ISA flags in ``/proc/cpuinfo`` (Linux) tell the two apart.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX")):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = cpuinfo.read_text(errors="ignore")
        return any(flag in flags for flag in _NATIVE_BF16_CPU_FLAGS)
    return True  # not Linux: trust oneDNN's own answer


# bf16 tensor cores: compute capability 8.0 (Ampere) and later. torch.cuda.is_bf16_supported()
# alone is no test: by default it also answers True where bf16 is only emulated (Volta, Turing),
# where bf16 autocast runs several times slower than fp16.
_CUDA_BF16_CAPABILITY = (8, 0)


def _will_use_cuda(accelerator: str) -> bool:
    return accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available())


def cuda_has_native_bf16() -> bool:
    """True when the current CUDA device has bf16 tensor cores (compute capability >= 8.0).

    False without a visible CUDA device.
    """
    if not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability()
    return (major, minor) >= _CUDA_BF16_CAPABILITY and torch.cuda.is_bf16_supported()


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision string for ``accelerator`` on this machine.

    Returns ``"bf16-mixed"`` on GPUs with bf16 tensor cores (:func:`cuda_has_native_bf16`) and
    on CPUs with native bf16, ``"16-mixed"`` on older GPUs (and when ``accelerator`` names a GPU
    that this process cannot see), and ``"32-true"`` otherwise.
    """
    if _will_use_cuda(accelerator):
        return "bf16-mixed" if cuda_has_native_bf16() else "16-mixed"
    if accelerator in {"cpu", "auto"}:
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return "32-true"


def auto_channels_last(precision: str, accelerator: str = "auto") -> bool:
    """Whether to train in channels_last layout: a gain with mixed precision, a loss in CPU fp32."""
    if _will_use_cuda(accelerator):
        return True
    return str(precision).startswith("bf16") and cpu_has_native_bf16()


def auto_pin_memory(accelerator: str = "auto") -> bool:
    """Whether loaders should pin host memory: when training runs on a CUDA device (pinned
    batches are copied to it asynchronously), never on the CPU (pinning only costs there)."""
    return _will_use_cuda(accelerator) and torch.cuda.is_available()


def set_torch_threads(threads: int | None, key: str = "torch_threads") -> None:
    """Set torch's intra-op threads when ``threads`` is given (``None`` keeps torch's default).

    Raises:
        ConfigError: ``threads`` is not a positive integer (named by its config ``key``).
    """
    if threads is None:
        return
    from emseg.errors import ConfigError

    if isinstance(threads, bool) or int(threads) != threads or int(threads) <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {threads!r}")
    torch.set_num_threads(int(threads))


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``unknown CPU`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def describe_hardware() -> str:
    """One line naming the device, for every timing that is recorded."""
    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu_model_name()}, {torch.get_num_threads()} threads, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_native_bf16()}"
    )
