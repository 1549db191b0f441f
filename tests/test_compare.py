"""compare.py: the paired difference of two eval.py results on the same volume (emseg.compare)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from emseg.compare import compare_records, load_record
from emseg.errors import ConfigError, DataError
from tests.conftest import run_script


def _volumes(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels ``{0, 255}`` of 32 x 512 x 512 (8 blocks of 16 x 256 x 256) and two
    predictions of them: one with 4 % of the voxels wrong, one with 5 %."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:32, :512, :512]
    labels = ((yy % 128 - 64) ** 2 + (xx % 128 - 64) ** 2 < 40**2).astype(np.uint8)
    noise = rng.random(labels.shape)
    better = np.where(noise < 0.04, 1 - labels, labels)
    worse = np.where(noise < 0.05, 1 - labels, labels)
    return labels * 255, better * 255, worse * 255


def _score(tmp_path, name: str, prediction: np.ndarray, labels_path, capsys) -> str:
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, prediction)
    args = [f"prediction={path}", f"data.test_mask={labels_path}", "progress=false"]
    code, err = run_script("eval.py", args, tmp_path / name, capsys)  # into <name>/hydra
    assert code == 0, err
    return str(tmp_path / name / "hydra" / "metrics.json")


def test_compare_py_resolves_a_small_gain_that_both_intervals_cover(tmp_path, capsys):
    labels, better, worse = _volumes()
    labels_path = tmp_path / "labels.tif"
    tifffile.imwrite(labels_path, labels)
    a = _score(tmp_path, "better", better, labels_path, capsys)
    b = _score(tmp_path, "worse", worse, labels_path, capsys)
    ra, rb = json.loads(open(a).read()), json.loads(open(b).read())
    assert len(ra["fg_iou_blocks"]["tp_fp_fn"]) == 8
    assert (
        ra["metrics"]["fg_iou_ci_low"] < ra["metrics"]["fg_iou"] < ra["metrics"]["fg_iou_ci_high"]
    )

    code, err = run_script("compare.py", [f"a={a}", f"b={b}"], tmp_path / "cmp", capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "hydra" / "comparison.json").read_text())
    assert result["difference"] == pytest.approx(ra["metrics"]["fg_iou"] - rb["metrics"]["fg_iou"])
    assert result["resolved"] and 0 < result["low"] < result["difference"] < result["high"]
    reverse = compare_records(load_record(b, "a"), load_record(a, "b"))
    assert reverse["difference"] == pytest.approx(-result["difference"])
    assert reverse["high"] < 0 and reverse["resolved"]


def test_records_of_different_volumes_or_labels_are_refused(tmp_path, capsys):
    labels, better, worse = _volumes()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    tifffile.imwrite(tmp_path / "one" / "labels.tif", labels)
    other = labels.copy()
    other[:16, :64, :64] = 0  # other labels, same shape
    tifffile.imwrite(tmp_path / "two" / "labels.tif", other)
    a = _score(tmp_path / "one", "a", better, tmp_path / "one" / "labels.tif", capsys)
    b = _score(tmp_path / "two", "b", worse, tmp_path / "two" / "labels.tif", capsys)
    ra, rb = load_record(a, "a"), load_record(b, "b")
    with pytest.raises(ConfigError, match="different volumes: test_mask"):
        compare_records(ra, rb)
    rb["test_mask"] = ra["test_mask"]  # as if the labels had been edited in place
    with pytest.raises(ConfigError, match="different labels: the foreground of block 0"):
        compare_records(ra, rb)
    rb = {**ra, "slices": 16}
    with pytest.raises(ConfigError, match="different volumes: slices"):
        compare_records(ra, rb)

    old = json.loads(open(a).read())
    del old["fg_iou_blocks"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match="no block counts"):
        load_record(tmp_path / "old.json", "b")
    code, err = run_script("compare.py", [f"a={a}", f"b={tmp_path / 'none'}"], tmp_path, capsys)
    assert code != 0 and "b: no eval.py record at" in err
