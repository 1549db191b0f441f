"""The files of an object analysis: the label volume, the table, the summary, the histogram.

All are checked before any work (:func:`check_outputs`) and each is written atomically
(:mod:`emseg.io.atomic`); nothing existing is replaced without ``overwrite``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import ConfigError
from emseg.io import atomic_path, check_output_path, write_json_atomic
from emseg.io.label_volumes import check_label_output, write_labels
from emseg.objects.measure import COLUMNS

__all__ = ["ObjectOutputs", "write_histogram", "write_table"]


@dataclass(frozen=True)
class ObjectOutputs:
    """Output paths: ``table`` (CSV) with ``<stem>_summary.json`` and ``<stem>_volumes.png``
    beside it, and optionally ``labels`` (any label volume string, e.g. ``labels.tif``)."""

    table: Path
    labels: str | None = None

    @property
    def summary(self) -> Path:
        return self.table.with_name(f"{self.table.stem}_summary.json")

    @property
    def histogram(self) -> Path:
        return self.table.with_name(f"{self.table.stem}_volumes.png")

    def check(self, overwrite: bool, inputs: list[Path], table_key: str = "table") -> None:
        """Refuse missing directories, outputs over inputs and existing outputs (one line)."""
        if self.table.suffix.lower() != ".csv":
            raise ConfigError(f"{table_key}: {self.table} must be a .csv file")
        for path, key in (
            (self.table, table_key),
            (self.summary, table_key),
            (self.histogram, table_key),
        ):
            check_output_path(path, key, overwrite, inputs)
        if self.labels is not None:
            check_label_output(self.labels, "labels_output", overwrite)
            for other in inputs:
                if str(Path(self.labels).resolve()) == str(Path(other).resolve()):
                    raise ConfigError(f"labels_output: {self.labels} is also an input")

    def write(
        self,
        labels: np.ndarray | None,
        table: dict[str, np.ndarray],
        summary: dict[str, Any],
        voxel_size: tuple[float, float, float] | None,
        overwrite: bool,
    ) -> dict[str, str]:
        """Write every output; returns their paths by name. ``labels`` ``None``: the label
        volume is already at :attr:`labels` (written blockwise)."""
        written = {}
        if self.labels is not None and labels is None:
            written["labels"] = str(self.labels)
        elif self.labels is not None:
            written["labels"] = str(write_labels(self.labels, labels, voxel_size, overwrite))
        write_table(self.table, table)
        write_histogram(self.histogram, table, voxel_size is not None)
        written.update(
            table=str(self.table), summary=str(self.summary), histogram=str(self.histogram)
        )
        write_json_atomic(self.summary, {**summary, "outputs": written})
        return written


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else f"{float(value):.6g}"
    if isinstance(value, np.bool_ | bool):
        return int(bool(value))
    return int(value) if isinstance(value, np.integer) else value


def write_table(path: Path, table: dict[str, np.ndarray]) -> None:
    """The object table as CSV (header :data:`~emseg.objects.measure.COLUMNS`; NaN = empty)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for row in zip(*(table[name] for name in COLUMNS), strict=True):
            writer.writerow([_cell(value) for value in row])


def write_histogram(path: Path, table: dict[str, np.ndarray], physical: bool) -> None:
    """A PNG histogram of the object volumes (log-spaced bins; border objects stacked apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = table["volume_um3"] if physical else table["voxels"].astype(float)
    border = table["touches_border"].astype(bool) if len(sizes) else np.zeros(0, bool)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(sizes):
        low, high = float(sizes.min()), float(sizes.max())
        bins = np.geomspace(low, high * 1.0001, 30) if high > low > 0 else 10
        axes.hist(
            [sizes[~border], sizes[border]],
            bins=bins,
            stacked=True,
            label=[f"interior ({int((~border).sum())})", f"touching border ({int(border.sum())})"],
            color=["tab:blue", "tab:gray"],
        )
        if isinstance(bins, np.ndarray):
            axes.set_xscale("log")
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no objects", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("volume (µm³)" if physical else "volume (voxels)")
    axes.set_ylabel("objects")
    axes.set_title(f"{len(sizes)} objects")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
