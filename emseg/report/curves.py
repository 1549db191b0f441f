"""Loss and accuracy curves read back from a run's TensorBoard event files.

``python -m emseg.report.curves OUT.png RUN_DIR [RUN_DIR ...]`` plots train/validation loss,
accuracy and foreground IoU against epoch, one line per run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

__all__ = ["read_scalars", "plot_curves"]

PANELS = {
    "loss": ("train/loss_epoch", "val/loss"),
    "accuracy": ("train/acc", "val/acc"),
    "foreground IoU": ("train/fg_iou", "val/fg_iou"),
}


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run as ``{tag: [(epoch, value), ...]}``.

    Steps are mapped to epochs through the ``epoch`` scalar Lightning logs beside each metric.
    """
    run_dir = Path(run_dir)
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    if not event_dirs:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files")
    series: dict[str, list[tuple[int, float]]] = {}
    for event_dir in event_dirs:
        accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0}).Reload()
        tags = accumulator.Tags()["scalars"]
        epoch_at = (
            {e.step: int(e.value) for e in accumulator.Scalars("epoch")}
            if ("epoch" in tags)
            else {}
        )
        for tag in tags:
            points = [
                (epoch_at.get(e.step, e.step), float(e.value)) for e in accumulator.Scalars(tag)
            ]
            series.setdefault(tag, []).extend(points)
    return series


def plot_curves(run_dirs: list[str | Path], out_png: str | Path, labels: list[str] | None = None):
    """Plot the ``PANELS`` for each run (train dashed, validation solid) into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [Path(r).name for r in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for run_dir, label in zip(run_dirs, labels, strict=True):
        series = read_scalars(run_dir)
        for ax, (title, (train_tag, val_tag)) in zip(axes, PANELS.items(), strict=True):
            for tag, style in ((train_tag, "--"), (val_tag, "-")):
                if tag in series:
                    epochs, values = zip(*sorted(series[tag]), strict=True)
                    ax.plot(epochs, values, style, label=f"{label} {tag.split('/')[0]}")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m emseg.report.curves OUT.png RUN_DIR [RUN_DIR ...]")
    plot_curves(sys.argv[2:], sys.argv[1])
