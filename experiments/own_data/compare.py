"""Summarise the own-data evidence runs of run.sh into results.json (and print the tables).

    .venv/bin/python experiments/own_data/compare.py RUNS_DIR experiments/own_data/results.json

Reads each run's TensorBoard events (per-step ``train/loss_step``, per-epoch ``val/fg_iou``)
and ``metrics.json``; numbers are copied, never computed from anything but those files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

FORMATS = ["tiff", "zarr", "hdf5", "n5", "slices"]
PARTIAL = ["labels_full", "labels_10pct", "labels_crops"]
FINETUNE = ["lucchipp_scratch", "lucchipp_finetune"]


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` over every event file of the run (last value per step)."""
    values: dict[int, float] = {}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values[int(event.step)] = float(event.value)
    return sorted(values.items())


def fit_seconds(run: Path) -> float | None:
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics.get("fit_seconds") or metrics.get("metrics", {}).get("fit_seconds")


def main(runs: Path, out: Path) -> None:
    result: dict = {"formats": {}, "partial_labels": {}, "fine_tuning": {}}
    losses = {f: scalars(runs / f"format_{f}", "train/loss_step") for f in FORMATS}
    reference = losses["tiff"]
    for name, curve in losses.items():
        result["formats"][name] = {
            "steps_logged": len(curve),
            "identical_to_tiff": curve == reference,
            "max_abs_difference": max(
                (abs(a[1] - b[1]) for a, b in zip(curve, reference, strict=False)), default=None
            ),
            "first_losses": [round(v, 6) for _, v in curve[:5]],
            "loss_at_step_100": curve[-1][1] if curve else None,
        }
    for group, names in (("partial_labels", PARTIAL), ("fine_tuning", FINETUNE)):
        for name in names:
            run = runs / name
            if not (run / "metrics.json").exists():
                continue
            curve = scalars(run, "val/fg_iou")
            result[group][name] = {
                "val_fg_iou_per_epoch": [(step, round(v, 4)) for step, v in curve],
                "final_val_fg_iou": curve[-1][1] if curve else None,
                "best_val_fg_iou": max(v for _, v in curve) if curve else None,
                "fit_seconds": fit_seconds(run),
            }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
