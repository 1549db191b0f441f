"""Reading finished run directories for the report scripts: what a report needs of one run,
and a command line that turns a missing piece into one error line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ReportError", "RunRecord", "load_run", "read_json", "read_yaml", "report_main"]


class ReportError(Exception):
    """A run directory (or a report's data file) lacks what the report needs."""


@dataclass
class RunRecord:
    """What the report needs of one run."""

    name: str
    path: Path
    config: dict[str, Any]
    train: dict[str, Any]
    evaluation: dict[str, Any]
    environment: dict[str, Any]
    overrides: list[str]

    @property
    def eval_metrics(self) -> dict[str, float]:
        """The whole-volume evaluation's metrics (``eval.py``'s metrics.json)."""
        return self.evaluation["metrics"]


def read_json(path: Path, what: str) -> dict[str, Any]:
    """``path``'s JSON; :class:`ReportError` naming ``what`` it should hold when it is missing."""
    if not path.is_file():
        raise ReportError(f"{path.parent}: missing {path.name} ({what})")
    return json.loads(path.read_text())


def read_yaml(path: Path, what: str) -> Any:
    """``path``'s YAML; :class:`ReportError` naming ``what`` it should hold when it is missing."""
    if not path.is_file():
        raise ReportError(f"{path}: not found ({what})")
    return yaml.safe_load(path.read_text())


def load_run(path: Path, eval_dir: str | None = "eval") -> RunRecord:
    """Read one run directory; raise :class:`ReportError` naming anything missing.

    ``eval_dir``: the sub-directory holding the run's whole-volume evaluation (``eval.py``);
    None for a run that is compared on validation only (its evaluation is then empty).
    """
    evaluation: dict[str, Any] = {}
    if eval_dir is not None:
        evaluation = read_json(path / eval_dir / "metrics.json", "whole-volume evaluation")
        for key in ("accuracy", "fg_iou", "mean_iou", "dice"):
            if key not in evaluation.get("metrics", {}):
                raise ReportError(f"{path}/{eval_dir}/metrics.json: no '{key}'")
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise ReportError(f"{path}: missing config.yaml (training config)")
    return RunRecord(
        name=path.name,
        path=path,
        config=yaml.safe_load(config_file.read_text()),
        train=read_json(path / "metrics.json", "training record"),
        evaluation=evaluation,
        environment=read_json(path / "environment.json", "command and commit"),
        overrides=overrides or [],
    )


def report_main(build: Callable[[], Path]) -> int:
    """Run a report's ``build``; print the file it wrote (exit code 0), or one error line and
    exit code 2 when a run lacks what the report needs."""
    try:
        path = build()
    except (ReportError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
