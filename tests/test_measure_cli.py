"""measure.py end to end (in process): outputs, instance metrics, one-line refusals (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emseg.io import open_volume
from tests.conftest import run_script


def _spheres(path: Path, touching: bool = True) -> Path:
    z, y, x = np.ogrid[:30, :40, :56]
    second = 29 if touching else 40
    mask = ((z - 15) ** 2 + (y - 20) ** 2 + (x - 15) ** 2 <= 81) | (
        (z - 15) ** 2 + (y - 20) ** 2 + (x - second) ** 2 <= 81
    )
    tifffile.imwrite(path, (mask * 255).astype(np.uint8))
    return path


def test_measure_writes_labels_table_summary_histogram(tmp_path: Path, capsys) -> None:
    mask = _spheres(tmp_path / "mask.tif")
    truth = _spheres(tmp_path / "truth.tif", touching=False)
    out = tmp_path / "out"
    out.mkdir()
    args = [
        f"input={mask}",
        f"truth={truth}",
        "objects.split=distance",
        "voxel_size=[5,5,5]",
        f"table={out / 'objects.csv'}",
        f"labels_output={out / 'instances.h5'}:instances",
    ]
    code, err = run_script("measure.py", args, tmp_path, capsys)
    assert code == 0, err
    with open_volume(f"{out / 'instances.h5'}:instances", "labels") as source:
        labels = source.read()
        assert source.dtype == np.uint32 and labels.max() == 2
        assert source.voxel_size == (5.0, 5.0, 5.0)
    rows = list(csv.DictReader((out / "objects.csv").open()))
    assert [row["id"] for row in rows] == ["1", "2"]
    assert float(rows[0]["volume_um3"]) == pytest.approx(int(rows[0]["voxels"]) * 125e-9)
    summary = json.loads((out / "objects_summary.json").read_text())
    assert summary["count"] == 2 and summary["settings"]["split"] == "distance"
    assert summary["instance_metrics"]["n_true"] == 2
    assert (out / "objects_volumes.png").read_bytes()[:4] == b"\x89PNG"
    # an existing table is refused, and left as it was
    before = (out / "objects.csv").read_bytes()
    code, err = run_script("measure.py", args, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "already exists; pass overwrite=true" in err
    assert (out / "objects.csv").read_bytes() == before


def test_measure_empty_prediction_and_bad_input(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((4, 10, 12), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    args = [f"input={empty}", f"table={out / 't.csv'}", "labels_output=null"]
    code, err = run_script("measure.py", args, tmp_path, capsys)
    assert code == 0, err
    assert json.loads((out / "t_summary.json").read_text())["count"] == 0
    assert (out / "t.csv").read_text().count("\n") == 1  # the header only
    negative = tmp_path / "neg.tif"
    tifffile.imwrite(negative, np.full((2, 6, 7), -3, np.int16))
    code, err = run_script(
        "measure.py", [f"input={negative}", f"table={out / 'n.csv'}"], tmp_path, capsys
    )
    assert code == 2 and "instance ids must be >= 0" in err and err.count("\n") == 1
    code, err = run_script(
        "measure.py",
        [f"input={empty}", "objects.split=cores", f"table={out / 'c.csv'}"],
        tmp_path,
        capsys,
    )
    assert code == 2 and "objects.split=cores" in err
