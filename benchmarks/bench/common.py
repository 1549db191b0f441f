"""Small helpers shared by the benchmark sections: config composition, timing statistics."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.resolvers import PROJECT_ROOT

__all__ = ["TRAIN_OVERRIDES", "compose_config", "log", "median", "summary"]

# The configuration every training measurement uses (the issue's): the seed report's recipe
# without ImageNet weights (this machine is offline; weights do not change the step time).
TRAIN_OVERRIDES = ["experiment=seed_report", "model.encoder_weights=null"]


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the final report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compose_config(
    name: str,
    overrides: Sequence[str],
    output_dir: Path | None = None,
    data_dir: Path | None = None,
) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the entry point would, outside a Hydra run.

    ``paths.output_dir`` normally comes from the Hydra run; here it is ``output_dir``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    return cfg


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, spread (interquartile range) and count of a list of seconds."""
    values = sorted(values)
    if not values:
        return {"median": float("nan"), "iqr": float("nan"), "n": 0}
    q1 = values[len(values) // 4]
    q3 = values[(3 * len(values)) // 4] if len(values) > 1 else values[0]
    return {"median": median(values), "iqr": float(q3 - q1), "n": len(values)}
