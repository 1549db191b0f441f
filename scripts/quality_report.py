"""The quality table of issue 6: one row per experiment, read from finished run directories.

``python -m scripts.quality_report --rows experiments/quality/rows.yaml --out experiments/quality``
(``make quality-report``; ``--targets`` defaults to ``targets.yaml`` beside the rows file)

``rows.yaml`` lists the experiments in order. Keys of a row:

* ``name``, ``change`` (what the row changes, in words), ``run`` (a ``train.py`` run directory);
* ``eval``: the sub-directory of ``run`` with the row's ``eval.py`` result (default ``eval``);
  several rows may share a run and differ in their evaluation (inference settings);
* ``extra``: ``{label: sub-directory}`` of further evaluations shown as columns (e.g. a
  ``data=lucchipp`` evaluation); labels scored in the main evaluation's own pass
  (``extra_masks``) become columns as well;
* ``curve``: a sub-directory whose ``*/metrics.json`` are evaluations of snapshot checkpoints,
  the points of the test-fg-IoU-against-training-time plot (``true`` = ``eval_snapshots``).
  The training seconds of a point are read from its checkpoint (the state of Lightning's
  ``Timer`` callback, or of emseg's older ``FitTimer``), so the time of a resumed run includes
  every process that trained it;
* ``marker: true``: plot the row's own evaluation as one point of that plot (its checkpoint's
  training time); a curve row's line always ends at its own evaluation;
* ``split: val``: a run compared on the validation hold-out only (the leave-one-out
  ablations): no test evaluation, shown in a table of its own with its difference from the
  first such row (the reference).

``val_choices/<name>/`` of a run holds ``eval.py split=val`` results (inference settings
compared on the validation hold-out; not test evaluations).

Every test-volume evaluation found in the listed run directories is counted (each ``eval.py``
pass over the test images once, whichever label volumes it scored) and the count is printed
under the table: settings are chosen on the validation hold-out, and the count shows how often
the test volume was looked at.

``targets.yaml`` holds the experiment's targets drawn in the plot: ``fg_iou`` (``{name: test
fg IoU}``) and ``budget_seconds`` (the training-time budget); both optional.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emseg.io.atomic import atomic_path, write_json_atomic
from emseg.io.checkpoint import read_checkpoint
from scripts.runs import ReportError, RunRecord, load_run, read_json, read_yaml, report_main

__all__ = [
    "CurvePoint",
    "QualityRow",
    "Targets",
    "build_quality_report",
    "checkpoint_progress",
    "load_rows",
    "load_targets",
    "main",
]


@dataclass
class Targets:
    """Lines of the fg-IoU-against-time plot: test fg IoU targets and a time budget."""

    fg_iou: dict[str, float] = field(default_factory=dict)
    budget_seconds: float | None = None


def load_targets(path: Path | None) -> Targets:
    """The targets of ``path`` (see the module docstring); none when ``path`` is ``None``."""
    if path is None:
        return Targets()
    data = read_yaml(path, "the experiment's targets") or {}
    budget = data.get("budget_seconds")
    return Targets(
        fg_iou={k: float(v) for k, v in (data.get("fg_iou") or {}).items()},
        budget_seconds=None if budget is None else float(budget),
    )


@dataclass
class CurvePoint:
    """Test fg IoU of one checkpoint and the training seconds it had cost."""

    checkpoint: str
    fit_seconds: float
    step: int
    fg_iou: float


@dataclass
class QualityRow:
    """One experiment: its training record, main evaluation and extra evaluations."""

    name: str
    change: str
    record: RunRecord
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    val_choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_only: bool = False


def _training_seconds(callbacks: dict[str, Any]) -> float | None:
    """Training seconds in a checkpoint's callback states: Lightning's ``Timer`` (state key
    ``Timer...``, ``{"time_elapsed": {"train": s, ...}}``) or emseg's older ``FitTimer``."""
    for key, state in callbacks.items():
        if str(key).startswith("Timer") and "train" in (state.get("time_elapsed") or {}):
            return float(state["time_elapsed"]["train"])
    state = callbacks.get("FitTimer")
    return None if state is None else float(state["seconds"])


def checkpoint_progress(path: Path) -> tuple[float, int]:
    """(training seconds, global step) stored in a Lightning checkpoint by its timer callback."""
    if not path.is_file():
        raise ReportError(f"{path}: checkpoint of a curve point is missing")
    checkpoint = read_checkpoint(path, label="curve point", weights_only=False)
    seconds = _training_seconds(checkpoint.get("callbacks") or {})
    if seconds is None:
        raise ReportError(
            f"{path}: no Timer (or FitTimer) state with the training time "
            "(not written by emseg's train.py)"
        )
    return seconds, int(checkpoint.get("global_step", -1))


def _read_eval(path: Path) -> dict[str, Any]:
    return read_json(path / "metrics.json", "eval.py")


def _curve(directory: Path) -> list[CurvePoint]:
    points = []
    for point_file in sorted(directory.glob("*/metrics.json")):
        evaluation = json.loads(point_file.read_text())
        seconds, step = checkpoint_progress(Path(evaluation["checkpoint"]))
        points.append(
            CurvePoint(evaluation["checkpoint"], seconds, step, evaluation["metrics"]["fg_iou"])
        )
    return sorted(points, key=lambda p: p.fit_seconds)


def _with_main_point(curve: list[CurvePoint], evaluation: dict[str, Any]) -> list[CurvePoint]:
    """The curve ending at the row's own evaluation (its best checkpoint), if not already on it."""
    checkpoint = evaluation.get("checkpoint")
    if checkpoint is None or any(p.checkpoint == checkpoint for p in curve):
        return curve
    seconds, step = checkpoint_progress(Path(checkpoint))
    point = CurvePoint(checkpoint, seconds, step, evaluation["metrics"]["fg_iou"])
    return sorted([*curve, point], key=lambda p: p.fit_seconds)


def _load_row(entry: dict[str, Any], spec_path: Path) -> QualityRow:
    missing = {"name", "run", "change"} - set(entry)
    if missing:
        raise ReportError(f"{spec_path}: row {entry} lacks {sorted(missing)}")
    run = Path(entry["run"])
    if not run.is_dir():
        raise ReportError(f"{spec_path}: row {entry['name']}: run directory {run} not found")
    val_only = entry.get("split", "test") == "val"
    record = load_run(run, None if val_only else entry.get("eval", "eval"))
    extra = {label: _read_eval(run / sub) for label, sub in (entry.get("extra") or {}).items()}
    for label, scored in record.evaluation.get("extra_masks", {}).items():
        extra.setdefault(label, scored)
    curve_dir = entry.get("curve")
    curve = []
    if curve_dir:
        curve = _curve(run / ("eval_snapshots" if curve_dir is True else curve_dir))
    if (curve_dir or entry.get("marker")) and not val_only:
        curve = _with_main_point(curve, record.evaluation)
    val_choices = {
        p.parent.name: json.loads(p.read_text())
        for p in sorted(run.glob("val_choices/*/metrics.json"))
    }
    for name, evaluation in val_choices.items():
        if evaluation.get("split") != "val":
            raise ReportError(f"{run}/val_choices/{name}: not an eval.py split=val result")
    return QualityRow(entry["name"], entry["change"], record, extra, curve, val_choices, val_only)


def load_rows(spec_path: Path) -> list[QualityRow]:
    """The rows of ``rows.yaml``; raise :class:`ReportError` naming anything missing."""
    if not spec_path.is_file():
        raise ReportError(f"{spec_path}: rows file not found")
    rows = [_load_row(entry, spec_path) for entry in yaml.safe_load(spec_path.read_text()) or []]
    if not rows:
        raise ReportError(f"{spec_path}: no rows")
    return rows


def count_test_evaluations(runs: list[Path]) -> int:
    """``eval.py`` passes over a test volume stored anywhere under the given run directories."""
    found = set()
    for run in {r.resolve() for r in runs}:
        for path in run.rglob("metrics.json"):
            if path.parent == run or "val_choices" in path.parts:
                continue
            evaluation = json.loads(path.read_text())
            if "counts" in evaluation and evaluation.get("split", "test") == "test":
                found.add(path)
    return len(found)


def _overrides(row: QualityRow) -> str:
    overrides = " ".join(o for o in row.record.overrides if not o.startswith("hydra."))
    return overrides or "(defaults)"


def _inference_cell(row: QualityRow) -> str:
    """The evaluation's settings that differ from conf/inference and conf/postprocess defaults."""
    evaluation = row.record.evaluation
    inference, post = evaluation.get("inference", {}), evaluation.get("postprocess", {})
    parts = [f"border {inference.get('border_pad')}"]
    if inference.get("tta", "none") != "none":
        parts.append(f"TTA {inference['tta']}")
    if post.get("median_size"):
        parts.append(f"median {post['median_size']}")
    return ", ".join(parts)


def _row_line(row: QualityRow, extra_labels: list[str]) -> str:
    r = row.record
    m, t = r.eval_metrics, r.train["metrics"]
    cells = [
        row.name,
        row.change,
        f"`{_overrides(row)}`",
        _inference_cell(row),
        f"{int(t.get('global_step', 0))}",
        f"{t.get('fit_seconds', float('nan')) / 60:.0f} min",
        f"{t.get('perf/step_seconds', float('nan')):.2f}",
        f"{t.get('val/best_fg_iou', float('nan')):.4f}",
        f"**{m['fg_iou']:.4f}**",
        f"{m['mean_iou']:.4f}",
        f"{m['dice']:.4f}",
        f"{100 * m['accuracy']:.2f}",
    ]
    for label in extra_labels:
        value = row.extra.get(label, {}).get("metrics", {}).get("fg_iou")
        cells.append("–" if value is None else f"{value:.4f}")
    return "| " + " | ".join(cells) + " |"


def _ablation_table(rows: list[QualityRow]) -> list[str]:
    """Validation-only rows (leave-one-out runs) against the first of them, the reference."""
    if not rows:
        return []
    reference = rows[0].record.train["metrics"].get("val/best_fg_iou", float("nan"))
    lines = [
        "## Leave-one-out runs, compared on the validation hold-out",
        "",
        "Each run removes one change of the reference; no test evaluation (none was chosen).",
        "",
        "| run | change | overrides | steps | train wall time | best val fg IoU | vs reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row.record.train["metrics"]
        best = t.get("val/best_fg_iou", float("nan"))
        lines.append(
            f"| {row.name} | {row.change} | `{_overrides(row)}` | {int(t.get('global_step', 0))} "
            f"| {t.get('fit_seconds', float('nan')) / 60:.0f} min | {best:.4f} | "
            f"{best - reference:+.4f} |"
        )
    return [*lines, ""]


def _val_choice_table(row: QualityRow) -> list[str]:
    """Inference / post-processing settings of one run compared on the validation hold-out."""
    lines = [
        f"## {row.name}: inference settings on the validation hold-out",
        "",
        f"`eval.py split=val` on `{Path(str(row.record.evaluation.get('checkpoint'))).name}`, "
        "the last 16 training slices (never the test volume); directories "
        f"`{row.record.path}/val_choices/*`.",
        "",
        "| setting | border | TTA | median | fg IoU | edge fg IoU | interior fg IoU | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, evaluation in row.val_choices.items():
        m, inference = evaluation["metrics"], evaluation.get("inference", {})
        lines.append(
            f"| {name} | {inference.get('border_pad')} | {inference.get('tta')} | "
            f"{evaluation.get('postprocess', {}).get('median_size')} | {m['fg_iou']:.4f} | "
            f"{m['edge_fg_iou']:.4f} | {m['interior_fg_iou']:.4f} | "
            f"{evaluation.get('seconds', float('nan')):.0f} |"
        )
    return [*lines, ""]


def _plot(rows: list[QualityRow], targets: Targets, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for row in rows:
        if row.curve:
            xs = [p.fit_seconds / 60 for p in row.curve]
            style = "o-" if len(row.curve) > 1 else "*"
            ax.plot(xs, [p.fg_iou for p in row.curve], style, ms=7, label=row.name)
    for name, target in targets.fg_iou.items():
        ax.axhline(target, ls="--", lw=0.8, color="grey")
        ax.text(
            0.01,
            target + 0.003,
            f"{name} target {target:.2f}",
            fontsize=8,
            color="grey",
            transform=ax.get_yaxis_transform(),  # x in axes fraction: inside whatever the range
        )
    if targets.budget_seconds is not None:
        ax.axvline(targets.budget_seconds / 60, ls=":", lw=0.8, color="grey")
    ax.set_xlabel("training wall time (min, validation included)")
    ax.set_ylabel("test fg IoU (whole volume, threshold 0.5)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def _table(rows: list[QualityRow], spec_path: Path, setup: str) -> list[str]:
    """The heading, provenance, ``setup`` (hardware, precision) and the table of the
    test-evaluated rows."""
    extra_labels = sorted({label for row in rows for label in row.extra})
    header = [
        "experiment",
        "change",
        "overrides",
        "inference",
        "steps",
        "train wall time",
        "s/step",
        "best val fg IoU",
        "test fg IoU",
        "test mean IoU",
        "test Dice",
        "test acc (%)",
        *[f"test fg IoU, {label}" for label in extra_labels],
    ]
    return [
        "# Quality experiments (issue 6)",
        "",
        f"Generated by `python -m scripts.quality_report --rows {spec_path}` from the run "
        "directories it lists. Test numbers: `eval.py` on the best-validation checkpoint, the "
        "whole EPFL test volume (165 slices), pooled confusion counts, threshold 0.5. "
        "fg IoU = foreground (mitochondria) IoU; mean IoU = mean of background and foreground "
        "IoU. Settings are chosen on the validation hold-out (last 16 training slices).",
        "",
        setup,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *[_row_line(row, extra_labels) for row in rows],
        "",
    ]


def _curve_section(rows: list[QualityRow], targets: Targets, out_dir: Path) -> list[str]:
    """The fg-IoU-against-time plot and its points (nothing when no row has a curve)."""
    if not any(row.curve for row in rows):
        return []
    _plot(rows, targets, out_dir / "fg_iou_vs_time.png")
    lines = ["## Test fg IoU against training wall time", "", "![](fg_iou_vs_time.png)", ""]
    for row in rows:
        for p in row.curve:
            lines.append(
                f"- {row.name}: step {p.step}, {p.fit_seconds / 60:.1f} min, "
                f"test fg IoU {p.fg_iou:.4f} (`{Path(p.checkpoint).name}`)"
            )
    return [*lines, ""]


def _summary(all_rows: list[QualityRow], test_count: int) -> dict[str, Any]:
    """results.json: every row's numbers and settings, and the test-evaluation count."""
    summary: dict[str, Any] = {
        row.name: {
            "change": row.change,
            "overrides": row.record.overrides,
            "train": row.record.train["metrics"],
            "hparams": row.record.train["hparams"],
            "eval": row.record.evaluation.get("metrics"),
            "inference": row.record.evaluation.get("inference"),
            "postprocess": row.record.evaluation.get("postprocess"),
            "extra_evals": {k: v["metrics"] for k, v in row.extra.items()},
            "curve": [p.__dict__ for p in row.curve],
            "val_choices": {k: v["metrics"] for k, v in row.val_choices.items()},
        }
        for row in all_rows
    }
    summary["test_evaluations"] = test_count
    return summary


def build_quality_report(spec_path: Path, out_dir: Path, targets: Targets | None = None) -> Path:
    """Write ``results.md``, ``results.json`` and ``fg_iou_vs_time.png`` into ``out_dir``;
    ``targets`` are drawn in the plot (none by default)."""
    all_rows = load_rows(spec_path)
    rows = [row for row in all_rows if not row.val_only]
    if not rows:
        raise ReportError(f"{spec_path}: no row with a test evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    hardware = {str(row.record.environment.get("hardware", "?")) for row in all_rows}
    precision = {str(row.record.train["hparams"].get("precision")) for row in all_rows}
    test_count = count_test_evaluations([row.record.path for row in all_rows])
    setup = f"Hardware: {'; '.join(sorted(hardware))}. Precision: {', '.join(sorted(precision))}."
    lines = [
        *_table(rows, spec_path, setup),
        f"Test-volume evaluations counted in these run directories: {test_count}.",
        "",
        *_ablation_table([row for row in all_rows if row.val_only]),
    ]
    seen_choices: set[Path] = set()
    for row in rows:
        if row.val_choices and row.record.path not in seen_choices:
            seen_choices.add(row.record.path)
            lines += _val_choice_table(row)
    lines += _curve_section(rows, targets or Targets(), out_dir)
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text("\n".join(lines))
    write_json_atomic(out_dir / "results.json", _summary(all_rows, test_count))
    return out_dir / "results.md"


def main(argv: list[str] | None = None) -> int:
    """Command line (``--rows rows.yaml``, ``--out``, ``--targets``); returns the exit code."""
    parser = argparse.ArgumentParser(description="Build the quality table of issue 6.")
    parser.add_argument("--rows", type=Path, required=True, help="rows.yaml")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument(
        "--targets", type=Path, default=None, help="default: targets.yaml beside --rows, if any"
    )
    args = parser.parse_args(argv)
    targets_path = args.targets
    if targets_path is None and (args.rows.parent / "targets.yaml").is_file():
        targets_path = args.rows.parent / "targets.yaml"
    return report_main(
        lambda: build_quality_report(args.rows, args.out, load_targets(targets_path))
    )


if __name__ == "__main__":
    raise SystemExit(main())
