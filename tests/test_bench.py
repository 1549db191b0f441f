"""``make bench`` (``benchmarks/bench``) in its quick mode: every section runs end to end on tiny
synthetic sizes and writes a complete, sane report. The numbers themselves are not checked
(timings of a tiny model on a busy machine mean nothing); their presence, sign and finiteness
are."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.bench.report import render, targets
from benchmarks.bench.run import SECTIONS, main, parse_args, skip_reason
from emseg.resolvers import PROJECT_ROOT

RATIOS = [
    ("training", "lightning_ratio"),
    ("training", "lightning_ratio_vs_plain_with_metrics"),
    ("training", "real_loader_ratio"),
    ("training", "gflops_plain"),
    ("training", "gflops_lightning"),
    ("training", "seconds_per_image"),
    ("training", "matmul_bf16_gflops"),
    ("data", "samples_per_s"),
    ("data", "loader_over_model"),
    ("inference", "ratios", "default_vs_plain_whole_volume"),
    ("inference", "ratios", "default_vs_plain_median_slice"),
    ("inference", "ratios", "tiled_previous_default_vs_plain_median_slice"),
    ("inference", "ratios", "tta_flips_vs_plain_median_slice"),
    ("inference", "ratios", "tta_d4_vs_plain_median_slice"),
    ("inference", "big", "default_vs_plain_median_slice"),
    ("inference", "big", "tiles_1024_vs_plain_median_slice"),
    ("inference", "test", "default", "peak_rss_bytes"),
    ("inference", "big", "default", "peak_rss_bytes"),
    ("quality", "fp32_vs_auto_seconds"),
]


def _at(results: dict, path: tuple[str, ...]):
    node = results
    for key in path:
        assert isinstance(node, dict) and key in node, f"missing {'.'.join(path)}"
        node = node[key]
    return node


@pytest.fixture(scope="module")
def quick(tmp_path_factory, tiny_checkpoint) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--out", str(out), "--scratch", str(out / "scratch")]
    assert main([*args, "--ckpt", str(tiny_checkpoint)]) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


@pytest.mark.slow  # ~35 s: a quick run of every make bench section (speed is checked by make bench)
def test_quick_bench_reports_every_section(quick):
    results, report = quick
    env = results["environment"]
    for key in ("cpu_model", "cpu_capability", "mkldnn_bf16_supported", "torch_threads"):
        assert env[key] not in (None, ""), key
    assert results["quick"] is True
    for path in RATIOS:
        value = _at(results, path)
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, path
    training = results["training"]
    assert (
        training["lightning"]["steps_run"] == results["sizes"]["warmup"] + results["sizes"]["steps"]
    )
    assert set(training["precision_grid"]) == {
        "32-true",
        "32-true+channels_last",
        "bf16-mixed",
        "bf16-mixed+channels_last",
    }
    assert training["flops"]["step_flops"] > training["flops"]["forward_flops"] > 0
    assert "convolution" in training["profile_table"]
    quality = results["quality"]["variants"]
    assert all(0.0 <= v["fg_iou"] <= 1.0 for v in quality.values())
    # Every target is evaluated (startup is skipped in quick mode).
    for name, target in results["targets"].items():
        expected = None if name == "startup_seconds" else (True, False)
        assert target["met"] in (expected if isinstance(expected, tuple) else (expected,)), name
    assert env["cpu_model"] in report and "Lightning / plain" in report
    assert "quick mode" in report


def test_targets_fail_when_a_number_misses_its_limit():
    results = {
        "training": {"lightning_ratio": 1.2, "auto_is_fastest": True},
        "data": {"loader_over_model": 0.5},
        "inference": {
            "ratios": {"default_vs_plain_whole_volume": 1.1},
            "test": {"default": {"peak_rss_bytes": 4 * 1024**3}},
            "big": None,
        },
        "quality": {"bf16_minus_fp32_fg_iou": -0.02},
    }
    checked = targets(results)
    assert checked["lightning_over_plain_step"]["met"] is False
    assert checked["loader_over_model_samples"]["met"] is False
    assert checked["default_inference_over_plain"]["met"] is True
    assert checked["peak_rss_test_volume_bytes"]["met"] is False
    assert checked["peak_rss_big_volume_bytes"]["met"] is None
    assert checked["startup_seconds"]["met"] is None
    assert checked["auto_precision_fastest_and_keeps_fg_iou"]["met"] is False


def test_report_renders_partial_results():
    results = {
        "command": "python -m benchmarks.bench --sections startup",
        "quick": False,
        "bench_seconds": 12.0,
        "sizes": {},
        "environment": {
            "date_utc": "now",
            "git_commit": "abc",
            "cpu_model": "Some CPU",
            "cpu_count": 2,
            "git_dirty": True,
            "torch": "2",
            "torch_threads": 2,
            "cpu_capability": "AVX512",
            "mkldnn_bf16_supported": True,
            "native_bf16": True,
            "cuda": None,
            "auto_precision_cpu": "bf16-mixed",
            "auto_channels_last_cpu": True,
        },
        "startup": {
            "command": "python train.py",
            "seconds_to_first_step": 25.0,
            "stages_s": {"first_step": 25.0},
            "import_s": 5.0,
        },
    }
    results["quality"] = {"skipped": "no --ckpt given"}
    results["targets"] = targets(results)
    report = render(results)
    assert "| startup_seconds | 25.000 | 20.0 | NOT met |" in report
    assert "Some CPU" in report and "commit `abc+dirty`" in report
    assert "Section quality skipped: no --ckpt given." in report
    assert "| auto_precision_fastest_and_keeps_fg_iou |" in report


def test_sections_on_a_trained_model_need_an_explicit_checkpoint(tmp_path, capsys):
    """Without --ckpt the inference and quality sections are skipped, never fed a checkpoint
    found somewhere in the repository; a --ckpt that is not a file is a usage error."""
    args = parse_args([])
    skipped = {name for name in SECTIONS if skip_reason(name, args)}
    assert skipped == {"inference", "quality"}
    assert "--ckpt" in skip_reason("quality", args)
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"")
    args = parse_args(["--ckpt", str(ckpt), "--quick"])
    assert args.ckpt == str(ckpt.resolve())
    assert {name for name in SECTIONS if skip_reason(name, args)} == {"startup"}
    with pytest.raises(SystemExit):
        parse_args(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert "no such file" in capsys.readouterr().err


def test_benchmarks_patch_nothing_and_search_no_outputs():
    """The benchmark measures the machine as it is: no mocked CUDA (that rule is a unit test of
    emseg.hardware), no checkpoints picked from the repository's outputs/."""
    for path in (PROJECT_ROOT / "benchmarks").rglob("*.py"):
        source = path.read_text()
        assert "mock" not in source and '"outputs"' not in source, path


def test_unknown_section_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--sections", "training,gpu"])
    assert "unknown sections" in capsys.readouterr().err


def test_make_bench_target_runs_the_module():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "bench: $(STAMP)" in makefile and "$(PY) -m benchmarks.bench" in makefile


def test_peak_rss_of_a_worker_is_its_own(tmp_path):
    """A worker started by a process holding a large buffer reports its own peak, not the
    parent's (``ru_maxrss`` survives fork + exec; VmHWM does not)."""
    import subprocess
    import sys

    from benchmarks.bench.env import peak_rss_bytes

    ballast = bytearray(2 * 1024**3)  # 2 GiB resident in this process
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert peak_rss_bytes() > 2 * 1024**3
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from benchmarks.bench.env import peak_rss_bytes; print(peak_rss_bytes())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    assert int(done.stdout.strip()) < 1.5 * 1024**3  # torch's import alone: ~0.7 GiB
    del ballast
