"""The quality table (issue 6, scripts/quality_report.py) on fake run directories: rows, curve
points, the test count."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from emseg.resolvers import PROJECT_ROOT
from scripts.quality_report import Targets, build_quality_report, checkpoint_progress, main
from scripts.runs import ReportError
from tests.test_report import _fake_eval, _fake_run


def _save_checkpoint(path, step: int, callbacks: dict) -> None:
    """A minimal Lightning-like checkpoint with callback state."""
    torch.save({"state_dict": {}, "global_step": step, "callbacks": callbacks}, path)


@pytest.fixture
def rows_file(tmp_path):
    image, mask = tmp_path / "test.tif", tmp_path / "mask.tif"
    base = _fake_run(tmp_path / "runs", "base", "bce", 0.70, image, mask)
    fast = _fake_run(tmp_path / "runs", "fast", "bce_dice", 0.84, image, mask)
    _fake_eval(fast / "eval_lucchipp", 0.86, image, mask, None)
    for epoch, (seconds, fg_iou) in enumerate([(600.0, 0.75), (1800.0, 0.82)]):
        ckpt = tmp_path / f"snapshot-epoch{epoch:03d}.ckpt"
        torch.save(
            {
                "state_dict": {},
                "global_step": 100 * (epoch + 1),
                "callbacks": {"FitTimer": {"seconds": seconds}},
            },
            ckpt,
        )
        point = fast / "eval_snapshots" / ckpt.stem
        _fake_eval(point, fg_iou, image, mask, None)
        data = json.loads((point / "metrics.json").read_text())
        data["checkpoint"] = str(ckpt)
        (point / "metrics.json").write_text(json.dumps(data))
    for name, fg_iou in (("border0", 0.91), ("tta_flips", 0.93)):
        _fake_eval(fast / "val_choices" / name, fg_iou, image, mask, None)
        data = json.loads((fast / "val_choices" / name / "metrics.json").read_text())
        data["split"] = "val"
        (fast / "val_choices" / name / "metrics.json").write_text(json.dumps(data))
    # The run's best checkpoint (its main evaluation ends the curve).
    best_ckpt = tmp_path / "best.ckpt"
    torch.save(
        {"state_dict": {}, "global_step": 300, "callbacks": {"FitTimer": {"seconds": 2400.0}}},
        best_ckpt,
    )
    for sub in ("eval", "eval_lucchipp"):
        data = json.loads((fast / sub / "metrics.json").read_text())
        data["checkpoint"] = str(best_ckpt)
        (fast / sub / "metrics.json").write_text(json.dumps(data))
    # A second evaluation of the same run (other inference settings), scoring a second label
    # volume in its own pass.
    _fake_eval(fast / "eval_tta", 0.87, image, mask, None)
    data = json.loads((fast / "eval_tta" / "metrics.json").read_text())
    data["extra_masks"] = {"lucchipp": {"metrics": {"fg_iou": 0.89}}}
    data["checkpoint"] = str(best_ckpt)
    data["inference"], data["postprocess"] = {"border_pad": 0, "tta": "d4"}, {"median_size": 3}
    (fast / "eval_tta" / "metrics.json").write_text(json.dumps(data))
    # Leave-one-out runs: validation only.
    for name, best in (("short_ref", 0.80), ("short_2d", 0.77)):
        run = _fake_run(tmp_path / "runs", name, "bce_dice", 0.0, image, mask)
        record = json.loads((run / "metrics.json").read_text())
        record["metrics"].update({"val/best_fg_iou": best, "global_step": 600})
        (run / "metrics.json").write_text(json.dumps(record))
        shutil.rmtree(run / "eval")
    rows = [
        {"name": "base", "run": str(base), "change": "reference"},
        {
            "name": "fast",
            "run": str(fast),
            "change": "everything",
            "curve": True,
            "extra": {"lucchipp": "eval_lucchipp"},
        },
        {"name": "best", "run": str(fast), "eval": "eval_tta", "change": "+ TTA", "marker": True},
        {
            "name": "short_ref",
            "run": str(tmp_path / "runs" / "short_ref"),
            "change": "-",
            "split": "val",
        },
        {
            "name": "short_2d",
            "run": str(tmp_path / "runs" / "short_2d"),
            "change": "2D",
            "split": "val",
        },
    ]
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(rows))
    return path


def test_table_rows_curve_and_test_count(rows_file, tmp_path):
    out = tmp_path / "quality"
    text = build_quality_report(rows_file, out).read_text()
    assert "| base | reference | `ablation=base` |" in text
    assert "**0.8400**" in text and "| 0.8600 |" in text  # fast: main and Lucchi++ columns
    assert "test fg IoU, lucchipp" in text
    # best: same run, its own evaluation; Lucchi++ scored in that evaluation's pass.
    assert "| border 0, TTA d4, median 3 |" in text and "**0.8700**" in text
    assert "| 0.8900 |" in text
    # base: 1 evaluation; fast: main + lucchipp + eval_tta + 2 snapshots; the val-only runs and
    # val_choices none.
    assert "Test-volume evaluations counted in these run directories: 6." in text
    assert "| short_2d | 2D | `ablation=short_2d` | 600 | 2 min | 0.7700 | -0.0300 |" in text
    assert "**0.0000**" not in text  # no test cell for a validation-only run
    assert "step 100, 10.0 min, test fg IoU 0.7500" in text
    assert "step 200, 30.0 min, test fg IoU 0.8200" in text
    assert "| tta_flips |" in text and "| 0.9300 |" in text  # validation choices, not counted
    assert 1000 < (out / "fg_iou_vs_time.png").stat().st_size < 1_000_000
    curve = json.loads((out / "results.json").read_text())["fast"]["curve"]
    assert [p["fit_seconds"] for p in curve] == [600.0, 1800.0, 2400.0]  # snapshots + best
    assert "- best: step 300, 40.0 min, test fg IoU 0.8700" in text  # a marker of its own


def test_missing_run_or_snapshot_fails_with_its_name(rows_file, tmp_path):
    rows = yaml.safe_load(rows_file.read_text())
    snapshot = next((tmp_path / "runs" / "fast" / "eval_snapshots").glob("*/metrics.json"))
    checkpoint = json.loads(snapshot.read_text())["checkpoint"]
    torch.save({"state_dict": {}, "global_step": 1}, checkpoint)
    with pytest.raises(ReportError, match="Timer"):
        build_quality_report(rows_file, tmp_path / "q")
    rows[0]["run"] = str(tmp_path / "nowhere")
    rows_file.write_text(yaml.safe_dump(rows))
    assert main(["--rows", str(rows_file), "--out", str(tmp_path / "q2")]) == 2


def test_training_seconds_from_lightning_timer_or_fit_timer(tmp_path):
    """A checkpoint's training time: Lightning's Timer state, else emseg's older FitTimer's."""
    timer = tmp_path / "timer.ckpt"
    state = {"Timer": {"time_elapsed": {"train": 1234.5, "validate": 10.0, "test": 0.0}}}
    _save_checkpoint(timer, 50, state)
    assert checkpoint_progress(timer) == (1234.5, 50)
    both = tmp_path / "both.ckpt"
    state = {"FitTimer": {"seconds": 99.0}, "Timer{'duration': None}": state["Timer"]}
    _save_checkpoint(both, 7, state)
    assert checkpoint_progress(both) == (1234.5, 7)
    old = tmp_path / "old.ckpt"
    torch.save(
        {"state_dict": {}, "global_step": 3, "callbacks": {"FitTimer": {"seconds": 99.0}}}, old
    )
    assert checkpoint_progress(old) == (99.0, 3)


def test_targets_from_the_experiment_data_file(rows_file, tmp_path):
    """Targets are data beside the experiment (targets.yaml), found beside the rows file."""
    (rows_file.parent / "targets.yaml").write_text(
        yaml.safe_dump({"fg_iou": {"fast": 0.85}, "budget_seconds": 7200})
    )
    out = tmp_path / "quality"
    assert main(["--rows", str(rows_file), "--out", str(out)]) == 0
    assert (out / "fg_iou_vs_time.png").stat().st_size > 1000
    assert build_quality_report(rows_file, tmp_path / "q", Targets()).is_file()
    shipped = yaml.safe_load(
        (PROJECT_ROOT / "experiments" / "quality" / "targets.yaml").read_text()
    )
    assert shipped["fg_iou"] == {"fast": 0.85, "best": 0.90}


def test_time_to_quality_is_built_from_records_and_checks_them(tmp_path):
    """scripts.time_to_quality: the curve across sessions from committed records' numbers."""
    import yaml

    from scripts.time_to_quality import load, markdown, plot

    spec = {
        "target": {"fg_iou": 0.85, "minutes": 60},
        "series": [
            {"name": "a", "cpu": "x", "record": "README.md", "points": [[30, 0.7], [60, 0.86]]},
            {"name": "b", "cpu": "y", "record": "README.md", "points": [[99, 0.858]]},
            {"name": "c", "cpu": "z", "record": "README.md", "points": [[20, 0.84]]},
        ],
    }
    path = tmp_path / "ttq.yaml"
    path.write_text(yaml.safe_dump(spec))
    table = markdown(load(path))
    assert "| a | x | (30, 0.7000), (60, 0.8600) | 0.8600 at 60 min | yes |" in table
    assert "| b | y | (99, 0.8580) | 0.8580 at 99 min | fg IoU yes, 39.0 min over" in table
    assert "| c | z | (20, 0.8400) | 0.8400 at 20 min | no |" in table
    plot(load(path), tmp_path / "ttq.png")
    assert (tmp_path / "ttq.png").stat().st_size > 1000
    good = spec["series"][0]
    without_cpu = {k: v for k, v in good.items() if k != "cpu"}
    bad_specs = [
        ({**good, "record": "no/such.md"}, "record no/such.md not found"),
        ({**good, "points": [[10, 1.2]]}, "bad point"),
        (without_cpu, "lacks \\['cpu'\\]"),
    ]
    for series, message in bad_specs:
        path.write_text(yaml.safe_dump({"series": [series]}))
        with pytest.raises(ValueError, match=message):
            load(path)
