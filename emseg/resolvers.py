"""OmegaConf resolvers used by the YAML configs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from emseg.hardware import auto_channels_last, auto_precision

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _precision(value: str = "auto", accelerator: str = "auto") -> str:
    return auto_precision(accelerator) if str(value) == "auto" else str(value)


def _channels_last(value: str | bool = "auto", precision: str = "32-true", accelerator="auto"):
    if str(value) == "auto":
        return auto_channels_last(precision, accelerator)
    return bool(value)


def register_resolvers() -> None:
    """Register ``emseg_root``, ``emseg_precision`` and ``emseg_channels_last`` (idempotent)."""
    OmegaConf.register_new_resolver("emseg_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("emseg_precision", _precision, replace=True)
    OmegaConf.register_new_resolver("emseg_channels_last", _channels_last, replace=True)
