"""``make gpu-check`` (benchmarks/gpu_check) without a GPU: its CPU dry run end to end (tiny
network, synthetic volume staged and unpacked as the EPFL subset is), the fp16 weight parts and
their reassembly into a checkpoint that eval.py scores, the stage's budget, the recipe's CUDA
resolution with torch.cuda's capability queries mocked. Numbers are checked for presence and
sanity only (timings of a tiny model on a shared CPU mean nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import run as gpu_run
from benchmarks.gpu_check import stage, weights
from benchmarks.gpu_check.speed import datasheet_peak
from emseg import hardware
from emseg.errors import ConfigError, DataError
from emseg.inference import load_checkpoint
from emseg.io.checkpoint import resolve_checkpoint_path
from emseg.resolvers import PROJECT_ROOT
from tests.conftest import compose_train, run_script

# The dry run, made smaller still for `make test`: one batch size, no torch.compile.
SMALL = replace(gpu_run.DRY, speed_batches=(2,), compile_batch=None)


def _dry_run(tmp_path: Path, sections: str) -> tuple[int, dict, Path]:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    args = gpu_run.parse_args(
        ["--dry-run", "--in-process", "--sections", sections, "--out", str(out)]
        + ["--scratch", str(scratch)]
    )
    code = gpu_run.run(args, SMALL)
    return code, json.loads((out / "report.json").read_text()), scratch


def _finite_positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_dry_run_trains_and_the_returned_weights_evaluate_on_the_cpu(
    tmp_path, capsys, synthetic_data_dir
):
    code, report, scratch = _dry_run(tmp_path, "experiment,inference")
    assert code == 0, report
    assert report["dry_run"] is True and report["data"]["manifest"]["slices"] == 8
    experiment = report["experiment"]
    assert experiment["ok"] and experiment["metrics"]["global_step"] == 4
    rate = experiment["step_rate"]
    assert _finite_positive(rate["loader_over_model"]) and _finite_positive(rate["images_per_s"])
    assert "choose_settings=false" in experiment["command"]
    inference = report["inference"]
    assert _finite_positive(inference["predictor"]["slices_per_s"])
    assert _finite_positive(inference["pipeline_over_plain"])

    # What comes back: at most 8 files under 16 MiB; the weights reassemble to within fp16.
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert {"report.json", "gpu_weights.json", "gpu_weights.part00", "gpu_run.tar.gz"} <= set(files)
    assert len(files) <= 7 and all((out / f).stat().st_size < 16 * 2**20 for f in files)
    ckpt = tmp_path / "eval" / "gpu.ckpt"
    weights.assemble(out, ckpt, data_dir=scratch / "data")
    trained = load_checkpoint(resolve_checkpoint_path(scratch / "experiment")).net.state_dict()
    returned = load_checkpoint(ckpt).net.state_dict()
    assert trained.keys() == returned.keys()
    for key, value in trained.items():
        assert torch.allclose(value.float(), returned[key].float(), rtol=2e-3, atol=1e-4), key

    block = weights.choose_settings(ckpt)
    assert (tmp_path / "eval" / "settings_search.json").exists() and "threshold" in block
    args = [f"ckpt_path={ckpt}", "data=epfl", f"paths.data_dir={synthetic_data_dir}"]
    code, err = run_script("eval.py", [*args, "limit_slices=2", "progress=false"], tmp_path, capsys)
    assert code == 0, err[-3000:]
    scores = json.loads((tmp_path / "hydra" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= scores["fg_iou"] <= 1.0


def test_dry_run_speed_section_reports_ratio_throughput_and_mfu(tmp_path):
    code, report, _ = _dry_run(tmp_path, "speed")
    assert code == 0, report
    speed = report["speed"]
    row = speed["batches"]["2"]
    for key in ("lightning_ratio", "images_per_s", "plain_images_per_s", "mfu_measured"):
        assert _finite_positive(row[key]), key
    assert row["lightning"]["steps_run"] == SMALL.speed_warmup + SMALL.speed_steps
    assert "EMAWeightAveraging" in row["lightning"]["callbacks"]  # the recipe's callbacks
    assert _finite_positive(speed["gflop_per_image_step"])
    assert speed["compile"] == {"skipped": "not asked for"}


def test_weights_split_into_parts_and_a_damaged_part_is_refused(tmp_path, tiny_checkpoint):
    manifest = weights.export_parts(tiny_checkpoint, tmp_path, part_bytes=2**20)
    assert len(manifest["parts"]) > 1 and manifest["dtype"] == "float16"
    weights.assemble(tmp_path, tmp_path / "joined.ckpt")
    assert load_checkpoint(tmp_path / "joined.ckpt").net is not None
    part = tmp_path / manifest["parts"][1]["name"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ConfigError, match="damaged"):
        weights.assemble(tmp_path, tmp_path / "again.ckpt")
    assert weights.main([str(tmp_path / "none"), "--out", str(tmp_path / "x.ckpt")]) == 2


def test_stage_keeps_the_last_slices_and_refuses_what_does_not_fit(tmp_path, synthetic_data_dir):
    manifest = stage.build(synthetic_data_dir, tmp_path / "stage", 5, with_wheels=False)
    image = manifest["files"][1]
    assert image["z_range"] == [3, 8] and image["shape"][0] == 5
    data = stage.unpack(tmp_path / "stage", tmp_path / "data")
    assert data["slices"] == 5 and (tmp_path / "data" / "epfl" / "training.tif").is_file()
    with pytest.raises(ConfigError, match="exceed"):
        stage.build(synthetic_data_dir, tmp_path / "small", 5, budget_bytes=1, with_wheels=False)
    with pytest.raises(ConfigError, match="--slices must be in"):
        stage.build(synthetic_data_dir, tmp_path / "bad", 99, with_wheels=False)
    packed = tmp_path / "stage" / "data" / "epfl" / "training.tif.xz"
    packed.write_bytes(packed.read_bytes()[:-8])
    with pytest.raises(DataError, match="not the staged file"):
        stage.unpack(tmp_path / "stage", tmp_path / "again")


def test_bad_arguments_and_no_gpu_exit_2(capsys):
    with pytest.raises(SystemExit):
        gpu_run.parse_args(["--sections", "speed,train"])
    assert "unknown sections" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_run.parse_args(["--train-minutes", "0"])
    if not torch.cuda.is_available():
        assert gpu_run.main(["--stage", "/nonexistent"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_device_script_without_a_stage_stops_at_once(tmp_path):
    done = subprocess.run(
        ["bash", str(PROJECT_ROOT / "benchmarks/gpu_check/device.sh")],
        env={"PATH": "/usr/bin:/bin", "STAGE": str(tmp_path / "none"), "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "make gpu-stage" in done.stderr


def test_epochs_are_sized_to_end_the_schedule_inside_the_training_minutes():
    sizes = gpu_run.FULL
    # 22 ms a step, 250 steps an epoch, 240 s: 0.85 * 240 / 5.5 = 37 epochs, warm-up 5 %.
    assert gpu_run.epochs_for(0.022, 240.0, 250, 40, 2, sizes) == (37, 2)
    assert gpu_run.epochs_for(0.010, 240.0, 250, 40, 2, sizes) == (40, 2)  # the recipe's cap
    assert gpu_run.epochs_for(0.200, 240.0, 250, 40, 2, sizes) == (sizes.min_epochs, 1)


def test_datasheet_peaks_by_name():
    assert datasheet_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert datasheet_peak("Tesla T4") is None and datasheet_peak(None) is None


@pytest.mark.parametrize("capability", [(9, 0), None])
def test_gpu_recipe_resolves_for_the_hardware(monkeypatch, tmp_path, capability):
    """experiment=gpu on an H200 (mocked capability queries) and on a machine without one."""
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = compose_train(["experiment=gpu"], tmp_path, tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark is True
    assert (cfg.data.batch_size, cfg.data.context, cfg.data.num_workers) == (32, 1, 10)
    assert cfg.trainer.max_epochs * cfg.trainer.limit_train_batches == 10_000
    assert cfg.data.samples_per_epoch >= cfg.data.batch_size * cfg.trainer.limit_train_batches
    gpu = capability is not None
    assert cfg.trainer.precision == ("bf16-mixed" if gpu else "16-mixed")
    assert cfg.data.pin_memory is gpu and cfg.module.channels_last is True


@pytest.mark.slow
def test_whole_dry_run_as_the_gpu_machine_runs_it(tmp_path):
    """``python -m benchmarks.gpu_check --dry-run``: every section in its own processes as on
    the GPU (the gpu tests skip without CUDA), ~75 s here."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)]
        + ["--scratch", str(tmp_path / "scratch")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for name in gpu_run.SECTIONS:
        assert report[name]["ok"], (name, report[name])
    assert set(report["multirun"]["jobs"]) == {
        f"loss={loss},optim={optim}" for loss in ("bce", "dice") for optim in ("adam", "adagrad")
    }
    assert (
        report["gpu_tests"]["counts"].get("skipped", 0)
        + report["gpu_tests"]["counts"].get("passed", 0)
        == 1
    )
    assert report["speed"]["compile"]["backend"] == "eager"
    assert len(list(out.iterdir())) <= 8
