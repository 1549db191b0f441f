"""benchmarks/peers/table.py: one row per peer from the result.json files of three different
tools (each run in its own session), the committed records kept when a peer's run is gone, and
the test-time augmentation each scored prediction used named in the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.peers import table

EMSEG = {
    "peer": "emseg",
    "evaluation": {"inference": {"border_pad": 0, "tta": "flips"}, "threshold": 0.5},
    "train_s": 3480.0,
    "iterations": 3200,
    "s_per_iteration": 1.09,
    "train": {"peak_rss_mb": 2760.0},
    "predict": {"wall_s": 687.0, "peak_rss_mb": 1730.0},
    "score": {"fg_iou": 0.8729, "mean_iou": 0.9317, "dice": 0.9321},
    "snapshots": [{"name": "snapshot-epoch007", "train_s": 1620.0, "score": {"fg_iou": 0.278}}],
    "cpu": "Xeon (amx_bf16)",
}
NNUNET = {
    "peer": "nnunet",
    "train_s": 7200.0,
    "iterations": 105,
    "s_per_iteration": 68.4,
    "train": {"peak_rss_mb": 10854.0},
    "predict": {"wall_s": 720.0, "peak_rss_mb": 6000.0},
    "score": {"fg_iou": 0.41, "mean_iou": 0.69, "dice": 0.58},
    "final": {"name": "final", "mirroring": False, "predict_flags": ["--disable_tta"]},
    "snapshots": [],
    "cpu": "EPYC (avx512_bf16)",
}
BIAPY = {
    "peer": "biapy",
    "config": {"summary": {"test_tta": True}},
    "train_s": 7200.0,
    "iterations": 5300,
    "s_per_iteration": 1.34,
    "train": {"peak_rss_mb": 2600.0},
    "predict": {"wall_s": 4000.0, "peak_rss_mb": 3000.0},
    "score": {"fg_iou": 0.80, "mean_iou": 0.89, "dice": 0.88},
    "snapshots": [{"name": "snap_1800s", "train_s": 1800.0, "score": {"fg_iou": 0.6}}],
    "cpu": "EPYC",
}


def _write(root: Path, result: dict) -> None:
    (root / result["peer"]).mkdir(parents=True, exist_ok=True)
    (root / result["peer"] / "result.json").write_text(json.dumps(result))


def _run(monkeypatch: pytest.MonkeyPatch, runs: Path, out: Path) -> list[dict]:
    monkeypatch.setattr(sys, "argv", ["table.py", str(runs), "--out", str(out)])
    table.main()
    return json.loads((out / "results.json").read_text())


def test_rows_of_three_tools_with_their_test_time_augmentation(tmp_path, monkeypatch):
    runs, out = tmp_path / "outputs", tmp_path / "experiments"
    for result in (EMSEG, NNUNET, BIAPY):
        _write(runs, result)
    rows = {r["peer"]: r for r in _run(monkeypatch, runs, out)}
    assert list(rows) == ["emseg", "nnunet", "biapy"]
    assert rows["biapy"]["fg_iou"] == 0.80 and rows["biapy"]["iterations"] == 5300
    assert rows["biapy"]["curve"] == [[1800.0, 0.6], [7200.0, 0.80]]
    assert rows["emseg"]["curve"] == [[1620.0, 0.278], [3480.0, 0.8729]]
    assert rows["emseg"]["tta"] == "flips (chosen on val)"
    assert rows["nnunet"]["tta"] == "none (--disable_tta)"
    assert rows["biapy"]["tta"] == "8-way"
    text = (out / "table.md").read_text()
    assert "| nnunet | 0.4100 |" in text and "none (--disable_tta)" in text
    assert (out / "fg_iou_vs_time.png").stat().st_size > 0


def test_a_peer_run_from_an_earlier_session_is_kept_from_its_record(tmp_path, monkeypatch):
    runs, out = tmp_path / "outputs", tmp_path / "experiments"
    _write(runs, EMSEG)
    _run(monkeypatch, runs, out)
    assert json.loads((out / "runs" / "emseg.json").read_text()) == EMSEG

    # Next session: only nnU-Net's run directory exists; emseg's row comes from its record.
    (runs / "emseg" / "result.json").unlink()
    _write(runs, NNUNET)
    rows = _run(monkeypatch, runs, out)
    assert [r["peer"] for r in rows] == ["emseg", "nnunet"]
    assert rows[0]["fg_iou"] == EMSEG["score"]["fg_iou"]


def test_each_tools_own_test_time_augmentation_record_is_read():
    assert table.row({**BIAPY, "config": {"summary": {"test_tta": False}}})["tta"] == "none"
    mirrored = {**NNUNET, "final": {"name": "final", "mirroring": True}}
    assert table.row(mirrored)["tta"] == "mirroring (4)"
    # An nnU-Net run from before run.sh recorded its flags predicted with mirroring.
    assert table.row({**NNUNET, "final": {"mirroring": None}})["tta"] == "mirroring (4)"


def test_a_variant_of_a_peer_gets_its_own_row_beside_the_peers_earlier_one(tmp_path, monkeypatch):
    runs, out = tmp_path / "outputs", tmp_path / "experiments"
    _write(runs, EMSEG)
    _write(runs, NNUNET)
    variant = {**EMSEG, "score": {"fg_iou": 0.9, "mean_iou": 0.95, "dice": 0.94}}
    (runs / "emseg-fast_budget").mkdir()
    (runs / "emseg-fast_budget" / "result.json").write_text(json.dumps(variant))
    (runs / "emseg_not_a_run").mkdir()  # neither a peer's name nor <peer>-<variant>
    (runs / "emseg-unfinished").mkdir()  # a run without its result.json yet
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "emseg-notes.md").write_text("not a record\n")
    rows = _run(monkeypatch, runs, out)
    assert [r["peer"] for r in rows] == ["emseg", "emseg-fast_budget", "nnunet"]
    assert rows[1]["fg_iou"] == 0.9 and rows[0]["fg_iou"] == EMSEG["score"]["fg_iou"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "emseg-fast_budget.json",
        "emseg-notes.md",
        "emseg.json",
        "nnunet.json",
    ]
    assert "| emseg-fast_budget | 0.9000 |" in (out / "table.md").read_text()


def test_the_fg_iou_cell_carries_eval_pys_interval_where_the_record_has_it():
    scored = {**EMSEG, "score": {**EMSEG["score"], "fg_iou_ci_low": 0.861, "fg_iou_ci_high": 0.884}}
    text = table.markdown([table.row(scored), table.row(EMSEG)])
    assert "| emseg | 0.8729 (0.861-0.884) |" in text  # scored with the interval
    assert "| emseg | 0.8729 |" in text  # an older record: the score alone
