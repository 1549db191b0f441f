"""Build the reproduction report of the seed report from finished run directories.

``python -m scripts.reproduce_report --runs outputs/reproduce/cpu --out experiments/<name>``
(``make report``; ``make reproduce-report`` trains and evaluates the runs first)

Each run directory (one per ablation, as written by ``make reproduce-report``) must hold the
training record (``config.yaml``, ``metrics.json``, ``environment.json``, ``tb/``) and the
whole-volume evaluation ``eval/metrics.json`` (``eval.py``). A run without its metrics is an
error, never a blank cell. The report gets ``results.md``, ``results.json``, the figures and
each run's resolved config. The seed report's published values it is compared with are data,
in ``--reference`` (default ``experiments/seed_report/reference.yaml``).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from emseg.io.atomic import atomic_path, write_json_atomic
from emseg.report.curves import plot_curves
from emseg.resolvers import PROJECT_ROOT
from scripts.runs import ReportError, RunRecord, load_run, read_json, read_yaml, report_main

__all__ = ["Reference", "build_report", "find_runs", "load_reference", "main"]

DEFAULT_REFERENCE = PROJECT_ROOT / "experiments" / "seed_report" / "reference.yaml"


@dataclass
class Reference:
    """The seed report's published numbers (percent) and the order of the ablation rows."""

    accuracy: float
    iou: float
    ablation_accuracy: dict[str, float] = field(default_factory=dict)
    run_order: list[str] = field(default_factory=list)


def load_reference(path: Path = DEFAULT_REFERENCE) -> Reference:
    """The reference values of ``path`` (keys: the fields of :class:`Reference`)."""
    data = read_yaml(path, "the seed report's published values") or {}
    missing = {"accuracy", "iou"} - set(data)
    if missing:
        raise ReportError(f"{path}: lacks {sorted(missing)}")
    return Reference(
        accuracy=float(data["accuracy"]),
        iou=float(data["iou"]),
        ablation_accuracy={k: float(v) for k, v in (data.get("ablation_accuracy") or {}).items()},
        run_order=list(data.get("run_order") or []),
    )


def find_runs(root: Path, order: list[str] | None = None) -> list[Path]:
    """Run directories under ``root`` (those holding a ``config.yaml`` or ``.hydra``), the names
    in ``order`` first, in that order, then the others by name."""
    runs = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and ((p / "config.yaml").exists() or (p / ".hydra").exists())
    ]
    if not runs:
        raise ReportError(f"{root}: no run directories")
    order = order or []
    return sorted(runs, key=lambda p: (order.index(p.name) if p.name in order else 99, p.name))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _background_accuracy(record: RunRecord) -> float:
    counts = record.evaluation["counts"]["all"]
    total = sum(counts.values())
    return (counts["tn"] + counts["fp"]) / total


def _metrics_table(baseline: RunRecord, reference: Reference) -> list[str]:
    m = baseline.eval_metrics
    return [
        "| metric | ours (whole test volume) | seed report |",
        "|---|---|---|",
        f"| accuracy (%) | {_pct(m['accuracy'])} | {reference.accuracy:.2f} |",
        f"| foreground (mitochondria) IoU (%), metric of record | {_pct(m['fg_iou'])} | "
        f"{reference.iou:.2f} (the report does not say which IoU) |",
        f"| mean IoU of background and foreground (%) | {_pct(m['mean_iou'])} | – |",
        f"| foreground Dice (%) | {_pct(m['dice'])} | xx.xx (not reported) |",
        f"| precision / recall (%) | {_pct(m['precision'])} / {_pct(m['recall'])} | – |"
        if "precision" in m
        else "",
        f"| all-background accuracy of the test volume (%), for context | "
        f"{_pct(_background_accuracy(baseline))} | – |",
    ]


def _ablation_table(records: list[RunRecord], reference: Reference) -> list[str]:
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
        report = reference.ablation_accuracy.get(r.name)
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


def build_report(runs_root: Path, out_dir: Path, reference: Reference | None = None) -> Path:
    """Write ``results.md`` (+ figures, ``results.json``, configs) for the runs in ``runs_root``,
    compared with ``reference`` (default: :data:`DEFAULT_REFERENCE`).

    Raises:
        ReportError: a run lacks its training or evaluation metrics, or there are no runs.
    """
    reference = reference or load_reference()
    records = [load_run(p) for p in find_runs(runs_root, reference.run_order)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(exist_ok=True)
    for r in records:
        shutil.copy(r.path / "config.yaml", out_dir / "configs" / f"{r.name}.yaml")
    baseline = next((r for r in records if r.name == "baseline"), records[0])
    plot_curves([r.path for r in records], out_dir / "curves.png", [r.name for r in records])
    lines = [
        *_summary(runs_root, baseline, records, reference),
        *_figures(baseline, out_dir),
        "## Runs",
        "",
        *_commands(records),
        "",
    ]
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text("\n".join(lines))
    summary = {
        r.name: {"eval": r.eval_metrics, "train": r.train["metrics"], "hparams": r.train["hparams"]}
        for r in records
    }
    write_json_atomic(out_dir / "results.json", summary)
    return out_dir / "results.md"


def _summary(
    runs_root: Path, baseline: RunRecord, records: list[RunRecord], reference: Reference
) -> list[str]:
    """The report's text down to the curves: provenance, results, ablations."""
    return [
        f"# Seed report reproduced: {runs_root.name} budget",
        "",
        "Generated by `python -m scripts.reproduce_report` from the run directories in "
        f"`{runs_root}`; every number below is read from those runs' `metrics.json` files.",
        "All test metrics are computed over the whole test volume "
        f"({baseline.evaluation.get('slices', '?')} slices of "
        f"`{Path(str(baseline.evaluation.get('test_mask', '?'))).name}`, pooled confusion "
        "counts, threshold 0.5) by `eval.py` on each run's best-validation checkpoint.",
        "",
        f"## Results (baseline: {baseline.name})",
        "",
        *[line for line in _metrics_table(baseline, reference) if line],
        "",
        "## Ablations",
        "",
        *_ablation_table(records, reference),
        "",
        "## Curves",
        "",
        "![loss, accuracy and fg IoU per epoch](curves.png)",
        "",
        "Train (dashed) and validation (solid) per epoch, read from each run's TensorBoard "
        "events; validation = the last 16 slices of the training volume.",
        "",
    ]


def _figures(baseline: RunRecord, out_dir: Path) -> list[str]:
    """Example and tile-edge figures when the baseline's evaluation saved its predictions."""
    from emseg.report.figures import plot_edge_errors, plot_examples  # matplotlib: on use

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
        naive = read_json(naive_dir / "metrics.json", "naive-tiling evaluation")["metrics"]
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


def main(argv: list[str] | None = None) -> int:
    """Command line (``--runs`` directory of run directories, ``--out``, ``--reference``);
    returns the exit code."""
    parser = argparse.ArgumentParser(description="Build the reproduction report.")
    parser.add_argument("--runs", type=Path, required=True, help="directory of run directories")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument(
        "--reference", type=Path, default=DEFAULT_REFERENCE, help="the seed report's values"
    )
    args = parser.parse_args(argv)
    return report_main(lambda: build_report(args.runs, args.out, load_reference(args.reference)))


if __name__ == "__main__":
    raise SystemExit(main())
