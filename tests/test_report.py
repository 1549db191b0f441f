"""The reproduction report (scripts/reproduce_report.py) on a tiny synthetic multirun (seconds, no
training), compared with the seed report's values in experiments/seed_report/reference.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from torch.utils.tensorboard import SummaryWriter

from scripts.reproduce_report import build_report, load_reference, main
from scripts.runs import ReportError
from tests.conftest import make_volume


def _fake_eval(directory: Path, fg_iou: float, image: Path, mask: Path, probs: np.ndarray | None):
    directory.mkdir(parents=True)
    metrics = {
        "accuracy": 0.98,
        "fg_iou": fg_iou,
        "mean_iou": 0.9,
        "dice": 0.88,
        "precision": 0.9,
        "recall": 0.86,
        "edge_fg_iou": fg_iou - 0.1,
        "interior_fg_iou": fg_iou + 0.01,
    }
    counts = {"all": {"tp": 5, "fp": 1, "tn": 90, "fn": 4}}
    (directory / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": metrics,
                "counts": counts,
                "checkpoint": "best.ckpt",
                "seconds": 12.0,
                "test_image": str(image),
                "test_mask": str(mask),
            }
        )
    )
    if probs is not None:
        tifffile.imwrite(directory / "predictions.tif", probs)


def _fake_run(root: Path, name: str, loss: str, fg_iou: float, image, mask, probs=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"ablation={name}"]))
    (run / "config.yaml").write_text(yaml.safe_dump({"loss": {"_target_": loss}}))
    hparams = {
        "loss": loss,
        "optim": "adam",
        "lr": 1e-4,
        "l2_last_two": 0.0,
        "max_epochs": 2,
        "steps_per_epoch": "3",
        "precision": "32-true",
    }
    (run / "metrics.json").write_text(
        json.dumps({"metrics": {"fit_seconds": 90.0}, "hparams": hparams})
    )
    (run / "environment.json").write_text(json.dumps({"git_commit": "abc123", "hardware": "cpu"}))
    writer = SummaryWriter(run / "tb")
    for epoch in range(2):
        step = 3 * (epoch + 1) - 1
        for tag, value in (
            ("train/loss_epoch", 0.5 - 0.1 * epoch),
            ("val/loss", 0.4),
            ("train/acc", 0.9),
            ("val/acc", 0.92),
            ("epoch", epoch),
        ):
            writer.add_scalar(tag, value, step)
    writer.close()
    _fake_eval(run / "eval", fg_iou, image, mask, probs)
    return run


@pytest.fixture
def multirun(tmp_path):
    image, mask = make_volume(depth=4, size=64)
    image_path, mask_path = tmp_path / "test.tif", tmp_path / "test_mask.tif"
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(mask_path, mask)
    probs = np.where(mask > 0, 230, 20).astype(np.uint8)
    probs[1, :8] = 255  # an error band at the top of one slice
    root = tmp_path / "runs"
    baseline = _fake_run(root, "baseline", "bce", 0.81, image_path, mask_path, probs)
    _fake_run(root, "dice", "dice", 0.75, image_path, mask_path)
    naive = probs.copy()
    naive[:, :, 30:34] = 255
    _fake_eval(baseline / "eval_naive", 0.7, image_path, mask_path, naive)
    return root


def test_report_has_tables_figures_and_commands(multirun, tmp_path):
    out = tmp_path / "report"
    text = build_report(multirun, out).read_text()
    assert "| foreground (mitochondria) IoU (%), metric of record | 81.00 | 73.74" in text
    assert "| accuracy (%) | 98.00 | 95.13 |" in text
    assert "| baseline | bce | adam (0.0001) |" in text and "| dice | dice |" in text
    assert "91.34" in text  # the report's Dice-ablation accuracy beside ours
    assert "python train.py ablation=baseline" in text and "abc123" in text
    for figure in ("curves.png", "test_examples.png", "tile_edges.png"):
        assert (out / figure).stat().st_size > 1000
        assert (out / figure).stat().st_size < 1_000_000
    assert (out / "configs" / "dice.yaml").exists()
    assert json.loads((out / "results.json").read_text())["dice"]["eval"]["fg_iou"] == 0.75
    assert text.index("| baseline |") < text.index("| dice |")  # the reference's run order


def test_reference_values_come_from_the_data_file(multirun, tmp_path):
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump({"accuracy": 90.0, "iou": 60.5, "run_order": ["dice"]}))
    out = tmp_path / "report"
    assert main(["--runs", str(multirun), "--out", str(out), "--reference", str(reference)]) == 0
    text = (out / "results.md").read_text()
    assert "| accuracy (%) | 98.00 | 90.00 |" in text and "| 81.00 | 60.50" in text
    assert "– (not run)" in text and "91.34" not in text
    assert text.index("| dice |") < text.index("| baseline |")
    assert load_reference().iou == 73.74  # the seed report's published IoU
    reference.write_text(yaml.safe_dump({"accuracy": 90.0}))
    with pytest.raises(ReportError, match="iou"):
        load_reference(reference)


def test_missing_metrics_fail_loudly(multirun, tmp_path):
    (multirun / "dice" / "eval" / "metrics.json").unlink()
    with pytest.raises(ReportError, match="dice.*metrics.json"):
        build_report(multirun, tmp_path / "report")
    assert main(["--runs", str(multirun), "--out", str(tmp_path / "r2")]) == 2


def test_incomplete_eval_metrics_fail(multirun, tmp_path):
    path = multirun / "baseline" / "eval" / "metrics.json"
    data = json.loads(path.read_text())
    del data["metrics"]["fg_iou"]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match="fg_iou"):
        build_report(multirun, tmp_path / "report")
