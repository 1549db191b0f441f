"""Build the reproduction report from finished run directories.

``python -m emseg.report.results --runs outputs/reproduce/cpu --out experiments/<name>``

Each run directory (one per ablation, as written by ``make reproduce-report``) must hold the
training record (``config.yaml``, ``metrics.json``, ``environment.json``, ``tb/``) and the
whole-volume evaluation ``eval/metrics.json`` (``eval.py``). A run without its metrics is an
error, never a blank cell. The report gets ``results.md``, ``results.json``, the figures and
each run's resolved config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emseg.report.curves import plot_curves

__all__ = ["RunRecord", "load_run", "find_runs", "build_report", "REPORT_VALUES", "report_cli"]

# Published in the seed report (accuracy in %, "IoU" unlabelled in the report).
REPORT_VALUES = {"accuracy": 95.13, "iou": 73.74}
REPORT_ABLATION_ACCURACY = {"baseline": 95.2, "dice": 91.34, "adagrad": 93.46, "l2": 94.24}


class ReportError(Exception):
    """A run directory lacks what the report needs."""


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
        return self.evaluation["metrics"]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"{path.parent}: missing {path.name} ({what})")
    return json.loads(path.read_text())


def load_run(path: Path, eval_dir: str | None = "eval") -> RunRecord:
    """Read one run directory; raise :class:`ReportError` naming anything missing.

    ``eval_dir``: the sub-directory holding the run's whole-volume evaluation (``eval.py``);
    None for a run that is compared on validation only (its evaluation is then empty).
    """
    evaluation: dict[str, Any] = {}
    if eval_dir is not None:
        evaluation = _read_json(path / eval_dir / "metrics.json", "whole-volume evaluation")
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
        train=_read_json(path / "metrics.json", "training record"),
        evaluation=evaluation,
        environment=_read_json(path / "environment.json", "command and commit"),
        overrides=overrides or [],
    )


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root``: those holding a ``config.yaml`` or ``.hydra``."""
    runs = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and ((p / "config.yaml").exists() or (p / ".hydra").exists())
    ]
    if not runs:
        raise ReportError(f"{root}: no run directories")
    order = ["baseline", "dice", "adagrad", "l2", "focal", "sgd"]
    return sorted(runs, key=lambda p: (order.index(p.name) if p.name in order else 99, p.name))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _background_accuracy(record: RunRecord) -> float:
    counts = record.evaluation["counts"]["all"]
    total = sum(counts.values())
    return (counts["tn"] + counts["fp"]) / total


def _metrics_table(baseline: RunRecord) -> list[str]:
    m = baseline.eval_metrics
    return [
        "| metric | ours (whole test volume) | seed report |",
        "|---|---|---|",
        f"| accuracy (%) | {_pct(m['accuracy'])} | {REPORT_VALUES['accuracy']:.2f} |",
        f"| foreground (mitochondria) IoU (%), metric of record | {_pct(m['fg_iou'])} | "
        f"{REPORT_VALUES['iou']:.2f} (the report does not say which IoU) |",
        f"| mean IoU of background and foreground (%) | {_pct(m['mean_iou'])} | – |",
        f"| foreground Dice (%) | {_pct(m['dice'])} | xx.xx (not reported) |",
        f"| precision / recall (%) | {_pct(m['precision'])} / {_pct(m['recall'])} | – |"
        if "precision" in m
        else "",
        f"| all-background accuracy of the test volume (%), for context | "
        f"{_pct(_background_accuracy(baseline))} | – |",
    ]


def _ablation_table(records: list[RunRecord]) -> list[str]:
    lines = [
        "| run | loss | optimizer (lr) | L2 last two | epochs x steps | train wall time | "
        "s/step (median, last epoch) | accuracy (%) | fg IoU (%) | mean IoU (%) | Dice (%) | "
        "report accuracy (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        hp, m = r.train["hparams"], r.eval_metrics
        seconds = r.train["metrics"].get("fit_seconds", float("nan"))
        # The step time shows whether a run's wall time was stretched by other load.
        step = r.train["metrics"].get("perf/step_seconds", float("nan"))
        report = REPORT_ABLATION_ACCURACY.get(r.name)
        lines.append(
            f"| {r.name} | {hp['loss']} | {hp['optim']} ({hp['lr']:g}) | {hp['l2_last_two']:g} | "
            f"{hp['max_epochs']} x {hp['steps_per_epoch']} | {seconds / 60:.1f} min | "
            f"{step:.2f} | {_pct(m['accuracy'])} | {_pct(m['fg_iou'])} | {_pct(m['mean_iou'])} | "
            f"{_pct(m['dice'])} | {report if report is not None else '– (not run)'} |"
        )
    return lines


def _commands(records: list[RunRecord]) -> list[str]:
    lines = []
    for r in records:
        env = r.environment
        lines += [
            f"- **{r.name}**: `python train.py {' '.join(r.overrides)}` — commit "
            f"`{env.get('git_commit', 'unknown')[:10]}`, {env.get('hardware', '?')}, precision "
            f"{r.train['hparams'].get('precision')}; evaluation: "
            f"`python eval.py ckpt_path={r.evaluation.get('checkpoint')}` "
            f"({r.evaluation.get('seconds', float('nan')):.0f} s); config: `configs/{r.name}.yaml`",
        ]
    return lines


def build_report(runs_root: Path, out_dir: Path, data_dir: Path | None = None) -> Path:
    """Write ``results.md`` (+ figures, ``results.json``, configs) for the runs in ``runs_root``.

    Raises:
        ReportError: a run lacks its training or evaluation metrics, or there are no runs.
    """
    records = [load_run(p) for p in find_runs(runs_root)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(exist_ok=True)
    for r in records:
        shutil.copy(r.path / "config.yaml", out_dir / "configs" / f"{r.name}.yaml")
    baseline = next((r for r in records if r.name == "baseline"), records[0])

    plot_curves([r.path for r in records], out_dir / "curves.png", [r.name for r in records])
    figures = _figures(baseline, out_dir)

    lines = [
        f"# Seed report reproduced: {runs_root.name} budget",
        "",
        "Generated by `python -m emseg.report.results` from the run directories in "
        f"`{runs_root}`; every number below is read from those runs' `metrics.json` files.",
        "All test metrics are computed over the whole test volume "
        f"({baseline.evaluation.get('slices', '?')} slices of "
        f"`{Path(str(baseline.evaluation.get('test_mask', '?'))).name}`, pooled confusion "
        "counts, threshold 0.5) by `eval.py` on each run's best-validation checkpoint.",
        "",
        f"## Results (baseline: {baseline.name})",
        "",
        *[line for line in _metrics_table(baseline) if line],
        "",
        "## Ablations",
        "",
        *_ablation_table(records),
        "",
        "## Curves",
        "",
        "![loss, accuracy and fg IoU per epoch](curves.png)",
        "",
        "Train (dashed) and validation (solid) per epoch, read from each run's TensorBoard "
        "events; validation = the last 16 slices of the training volume.",
        "",
        *figures,
        "## Runs",
        "",
        *_commands(records),
        "",
    ]
    (out_dir / "results.md").write_text("\n".join(lines))
    summary = {
        r.name: {"eval": r.eval_metrics, "train": r.train["metrics"], "hparams": r.train["hparams"]}
        for r in records
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir / "results.md"


def _figures(baseline: RunRecord, out_dir: Path) -> list[str]:
    """Example and tile-edge figures when the baseline's evaluation saved its predictions."""
    from emseg.report.figures import plot_edge_errors, plot_examples

    evaluation = baseline.evaluation
    blended = baseline.path / "eval" / "predictions.tif"
    if not blended.is_file():
        return ["(No test examples: the baseline's evaluation did not save predictions.)", ""]
    image, mask = evaluation["test_image"], evaluation["test_mask"]
    chosen = plot_examples(image, mask, blended, out_dir / "test_examples.png")
    lines = [
        "## Test-set examples",
        "",
        "![test examples](test_examples.png)",
        "",
        "Baseline; slices chosen by rule: best, median and worst per-slice fg IoU ("
        + ", ".join(f"{k}: z={z}, {v:.3f}" for k, (z, v) in chosen.items())
        + ").",
        "",
    ]
    naive_dir = baseline.path / "eval_naive"
    if (naive_dir / "predictions.tif").is_file():
        naive = json.loads((naive_dir / "metrics.json").read_text())["metrics"]
        m = evaluation["metrics"]
        edge = plot_edge_errors(
            image, mask, naive_dir / "predictions.tif", blended, out_dir / "tile_edges.png"
        )
        lines += [
            "## Tile edges: naive tiling against blended sliding windows",
            "",
            "![tile edge errors](tile_edges.png)",
            "",
            "| inference | fg IoU | edge-band fg IoU | interior fg IoU |",
            "|---|---|---|---|",
            f"| naive disjoint tiles | {naive['fg_iou']:.4f} | {naive['edge_fg_iou']:.4f} | "
            f"{naive['interior_fg_iou']:.4f} |",
            f"| blended (default) | {m['fg_iou']:.4f} | {m['edge_fg_iou']:.4f} | "
            f"{m['interior_fg_iou']:.4f} |",
            "",
            f"Slice z={edge['z']}: {edge['naive_errors']} error pixels with naive tiling, "
            f"{edge['blended_errors']} blended.",
            "",
        ]
    return lines


def report_cli(
    build: Callable[[Path, Path], Path], description: str, source: str, argv: list[str] | None
) -> int:
    """A report command line: ``--<source> PATH --out DIR``, one error line and exit code 2 when
    a run lacks what the report needs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{source}", type=Path, required=True, dest="source")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    args = parser.parse_args(argv)
    try:
        path = build(args.source, args.out)
    except (ReportError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``--runs`` directory of run directories); returns the exit code."""
    return report_cli(build_report, "Build the reproduction report.", "runs", argv)


if __name__ == "__main__":
    sys.exit(main())
