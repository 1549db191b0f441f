"""OmegaConf resolvers used by the YAML configs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# emseg.hardware (torch) is imported when a resolver runs, not with the package: processes that
# never compose a training config (blockwise object workers, measure.py) start without torch.


def _precision(value: str = "auto", accelerator: str = "auto") -> str:
    from emseg.hardware import auto_precision

    return auto_precision(accelerator) if str(value) == "auto" else str(value)


def _channels_last(value: str | bool = "auto", precision: str = "32-true", accelerator="auto"):
    from emseg.hardware import auto_channels_last

    if str(value) == "auto":
        return auto_channels_last(precision, accelerator)
    return bool(value)


def _pin_memory(value: str | bool = "auto", accelerator: str = "auto") -> bool:
    from emseg.hardware import auto_pin_memory

    if str(value) == "auto":
        return auto_pin_memory(accelerator)
    return bool(value)


def _run_dirname(overrides: str = "", job_num: int | str = 0, max_len: int = 120) -> str:
    """A sweep run's directory name from its overrides (``loss=dice,optim=adagrad``).

    Path separators are replaced (an override such as ``model.encoder_weights=/a/b.pth`` must
    not create sub-directories), and long names are cut and suffixed with the job number so
    they stay unique and below file-system limits.
    """
    name = str(overrides).replace("/", "_").replace("\\", "_") or f"job{job_num}"
    if len(name) > max_len:
        name = f"{name[:max_len]}...job{job_num}"
    return name


def register_resolvers() -> None:
    """Register the ``emseg_*`` resolvers (idempotent)."""
    OmegaConf.register_new_resolver("emseg_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("emseg_precision", _precision, replace=True)
    OmegaConf.register_new_resolver("emseg_channels_last", _channels_last, replace=True)
    OmegaConf.register_new_resolver("emseg_pin_memory", _pin_memory, replace=True)
    OmegaConf.register_new_resolver("emseg_run_dirname", _run_dirname, replace=True)
