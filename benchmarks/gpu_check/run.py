"""``python -m benchmarks.gpu_check [--dry-run] [--stage DIR | --data-dir DIR] [--out DIR]``: the
GPU check, section by section, within one time budget (module :mod:`benchmarks.gpu_check`).

Every section's result is written into ``<out>/report.json`` as soon as it is known, so a run
stopped at its time limit still returns what it measured; a failing section is recorded with
its error and the next one runs. Exit status 0 when every section passed, 1 otherwise, 2 for
bad arguments or a missing CUDA device.

Time plan of the 8 minutes on an H200 (:data:`FULL`; no step of it has run on a GPU yet, so the
allowances are estimates): the gpu tests run in a second process while the sweep runs (both
check function, neither is timed: ~1.5 min); then the experiment, which first measures the
recipe's step time on its real loader (~15 s) and trains for what is left after keeping back
the speed and inference sections' allowances (4 minutes when the earlier sections kept to
theirs); then the speed section (~2 min, torch.compile only if time is left) and inference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from benchmarks.bench.common import compose_config, log
from benchmarks.bench.env import environment
from benchmarks.bench.run import jsonable, synthetic_data
from benchmarks.bench.training import bench_overrides
from benchmarks.gpu_check import speed, stage, weights
from emseg.errors import ConfigError, EmsegError
from emseg.io.atomic import write_json_atomic
from emseg.resolvers import PROJECT_ROOT

__all__ = ["SECTIONS", "Check", "Sizes", "main", "parse_args", "run"]

SECTIONS = ("gpu_tests", "multirun", "experiment", "speed", "inference")
# The user's 2 x 2 sweep (README): loss x optimizer.
SWEEP = ("loss=bce,dice", "optim=adam,adagrad")
# Files of the experiment run that come back (in gpu_run.tar.gz, with its TensorBoard events
# while the archive stays under TAR_BYTES); checkpoints come as fp16 parts.
RUN_FILES = (
    "config.yaml",
    "environment.json",
    "metrics.json",
    "settings_search.json",
    "train.log",
)
TAR_BYTES = 10 * 2**20
# The dry run's tiny network and sizes (as tests/conftest.py's TINY_OVERRIDES, on the CPU).
TINY = (
    "model=tiny",
    "data.patch_size=64",
    "data.val_slices=2",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
)


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the GPU check's (:data:`FULL`) or the dry run's."""

    minutes: float = 8.0
    train_minutes: float = 4.0
    tests_timeout_s: float = 150.0
    multirun_steps: int = 5
    multirun_timeout_s: float = 150.0
    speed_batches: tuple[int, ...] = (4, 16, 64)
    speed_steps: int = 20
    speed_warmup: int = 5
    speed_seconds: float = 120.0
    speed_min_seconds_per_batch: float = 12.0
    # torch.compile runs only with at least this many seconds of the speed section left.
    compile_min_seconds: float = 60.0
    compile_batch: int | None = 64
    compile_backend: str = "inductor"
    matmul_size: int = 8192
    loader_batches: int = 60
    # Seconds beyond the training minutes: start-up, the last validation, export.
    experiment_extra_s: float = 45.0
    # Kept back for the speed and inference sections when the training time is set.
    reserve_after_experiment_s: float = 140.0
    inference_reserve_s: float = 25.0
    # Share of the training seconds that steps may fill (validation, checkpoints: the rest).
    step_share: float = 0.85
    min_epochs: int = 4
    inference_slices: int | None = None
    tiny: tuple[str, ...] = ()
    # Extra overrides of the experiment run (the dry run's short schedule).
    experiment_overrides: tuple[str, ...] = ()
    stage_slices: int | str = "auto"
    # The batch size of the real-loader measurement; None: the recipe's (experiment=gpu).
    recipe_batch: int | None = None


FULL = Sizes()
DRY = Sizes(
    minutes=4.0,
    train_minutes=0.25,
    tests_timeout_s=120.0,
    multirun_steps=2,
    multirun_timeout_s=120.0,
    speed_batches=(1, 2),
    speed_steps=2,
    speed_warmup=1,
    speed_seconds=60.0,
    speed_min_seconds_per_batch=0.0,
    compile_min_seconds=0.0,
    compile_batch=2,
    compile_backend="eager",
    matmul_size=256,
    loader_batches=2,
    experiment_extra_s=120.0,
    reserve_after_experiment_s=0.0,
    inference_reserve_s=0.0,
    min_epochs=2,
    inference_slices=3,
    tiny=TINY,
    experiment_overrides=(
        "data.batch_size=2",
        "data.samples_per_epoch=8",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.max_epochs=2",
        "scheduler.warmup_epochs=1",
        "trainer.check_val_every_n_epoch=1",
    ),
    stage_slices=8,
    recipe_batch=2,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--stage", type=Path, help="a stage built by make gpu-stage")
    data.add_argument("--data-dir", type=Path, help="a data/ directory (EPFL volumes)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results ($OUT; default outputs/gpu_check)"
    )
    parser.add_argument("--scratch", type=Path, default=None, help="run directories, data")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--minutes", type=float, default=None, help="whole-check budget")
    parser.add_argument("--train-minutes", type=float, default=None, help="experiment=gpu training")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run train.py in this process, skip pytest (the CPU tests' mode)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in ("minutes", "train_minutes"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


@dataclass
class Check:
    """What the sections share: arguments, sizes, paths, the clock and the results so far."""

    args: argparse.Namespace
    sizes: Sizes
    out: Path
    scratch: Path
    data_dir: Path
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def budget_s(self) -> float:
        return 60.0 * (self.args.minutes or self.sizes.minutes)

    def remaining(self) -> float:
        """Seconds left of the whole check's budget."""
        return self.budget_s - (time.perf_counter() - self.started)

    def overrides(self) -> list[str]:
        """Every run's overrides: no ImageNet weights (offline), this data, no test volume
        (evaluated on the CPU afterwards), no progress bar (a log line every 50 steps)."""
        return [
            "model.encoder_weights=null",
            f"paths.data_dir={self.data_dir}",
            "data.test_image=null",
            "data.test_mask=null",
            "trainer.enable_progress_bar=false",
            "++callbacks.progress_bar=null",
            *self.sizes.tiny,
        ]

    def write(self) -> None:
        """``report.json`` with everything so far (atomic)."""
        self.results["elapsed_s"] = time.perf_counter() - self.started
        write_json_atomic(self.out / "report.json", jsonable(self.results))


def _run_in_process(script: str, args: list[str]) -> int:
    """``python <script> <args>`` in this process (the CPU tests: no second start-up)."""
    argv = sys.argv
    sys.argv = [script, *args]
    GlobalHydra.instance().clear()
    try:
        runpy.run_path(str(PROJECT_ROOT / script), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


@dataclass
class Command:
    """A Python command started by :func:`start_command` (``process`` is ``None`` once it ran
    in this process)."""

    name: str
    argv: list[str]
    logfile: Path
    timeout: float
    started: float
    process: subprocess.Popen | None = None
    returncode: int | None = None


def start_command(check: Check, name: str, argv: list[str], timeout: float) -> Command:
    """Start ``python <argv>`` with its output in ``<scratch>/<name>.log``; a root script runs
    to its end in this process instead under ``--in-process``."""
    log(f"{name}: python {' '.join(shlex.quote(a) for a in argv)}")
    command = Command(name, argv, check.scratch / f"{name}.log", timeout, time.perf_counter())
    if check.args.in_process and argv[0].endswith(".py"):
        command.returncode = _run_in_process(argv[0], argv[1:])
        return command
    with open(command.logfile, "w") as handle:
        command.process = subprocess.Popen(
            [sys.executable, *argv], cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT
        )
    return command


def finish_command(command: Command) -> dict[str, Any]:
    """Wait for ``command`` (killed at its timeout); its record, with the log's last lines
    printed."""
    timed_out = False
    if command.process is not None:
        left = command.timeout - (time.perf_counter() - command.started)
        try:
            command.returncode = command.process.wait(timeout=max(left, 1.0))
        except subprocess.TimeoutExpired:
            command.process.kill()
            command.process.wait()
            command.returncode, timed_out = 124, True
    logfile = command.logfile
    tail = logfile.read_text(errors="replace").splitlines()[-40:] if logfile.exists() else []
    for line in tail:
        print(f"  | {line}", flush=True)
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in command.argv),
        "returncode": command.returncode,
        "timed_out": timed_out,
        "seconds": time.perf_counter() - command.started,
        "log_tail": tail,
    }


def run_command(check: Check, name: str, argv: list[str], timeout: float) -> dict[str, Any]:
    """:func:`start_command`, then :func:`finish_command`."""
    return finish_command(start_command(check, name, argv, timeout))


def _pytest_counts(lines: list[str]) -> dict[str, int]:
    """``{"passed": n, "skipped": n, ...}`` from pytest's summary line."""
    counts: dict[str, int] = {}
    for line in lines[-3:]:
        for part in line.strip(" =").split(","):
            words = part.split()
            if len(words) >= 2 and words[0].isdigit():
                counts[words[1]] = int(words[0])
    return counts


def start_gpu_tests(check: Check) -> Command | None:
    """Start (a) in a second process (``None`` under ``--in-process``)."""
    if check.args.in_process:
        return None
    argv = ["-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    return start_command(check, "gpu_tests", argv, check.sizes.tests_timeout_s)


def section_gpu_tests(check: Check, started: Command | None = None) -> dict[str, Any]:
    """(a) The ``gpu``-marker tests: a CUDA bf16 fit and eval.py of its checkpoint (waited
    for here when :func:`start_gpu_tests` started them earlier)."""
    if check.args.in_process:
        return {"skipped": "--in-process: pytest cannot run inside the calling test session"}
    result = finish_command(started or start_gpu_tests(check))
    result["counts"] = _pytest_counts(result["log_tail"])
    result["ok"] = result["returncode"] == 0 and (
        check.args.dry_run or result["counts"].get("passed", 0) > 0
    )
    return result


def _job_record(run_dir: Path) -> dict[str, Any]:
    """A sweep job's final metrics, precision and hardware from its run directory."""
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    environment_file = run_dir / "environment.json"
    env = json.loads(environment_file.read_text()) if environment_file.exists() else {}
    config_file = run_dir / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.exists() else OmegaConf.create({})
    precision = OmegaConf.select(config, "trainer.precision")
    return {
        "global_step": metrics.get("global_step"),
        "val_fg_iou": metrics.get("val/fg_iou"),
        "train_loss": metrics.get("train/loss"),
        "fit_seconds": metrics.get("fit_seconds"),
        "precision": precision,
        "hardware": env.get("hardware"),
        "tensorboard_events": len(list(run_dir.glob("tb/**/events.out.tfevents.*"))),
    }


def section_multirun(check: Check) -> dict[str, Any]:
    """(b) ``train.py -m loss=bce,dice optim=adam,adagrad`` for a few steps on the GPU."""
    sweep_dir = check.scratch / "multirun"
    fixed = [
        *check.overrides(),
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={check.sizes.multirun_steps}",
        "trainer.limit_val_batches=2",
        "test_after_fit=false",
        "choose_settings=false",
    ]
    # Sweep directories named after the swept keys only (loss=dice,optim=adagrad).
    keys = ",".join(o.split("=")[0].lstrip("+~") for o in fixed)
    argv = [
        "train.py",
        "-m",
        *SWEEP,
        *fixed,
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.job.config.override_dirname.exclude_keys=[{keys}]",
    ]
    result = run_command(check, "multirun", argv, check.sizes.multirun_timeout_s)
    jobs = {}
    for run_dir in sorted(p for p in sweep_dir.glob("*") if (p / "metrics.json").exists()):
        jobs[run_dir.name] = _job_record(run_dir)
    result["jobs"] = jobs
    result["ok"] = result["returncode"] == 0 and len(jobs) == 4
    return result


def _speed_config(check: Check, batch: int, real_loader: bool) -> DictConfig:
    """experiment=gpu at ``batch`` for a timed Trainer run: one epoch, no validation, no
    checkpoints, no warm-up (the schedule is stepped once per epoch: no per-step cost); the
    recipe's loader workers for ``real_loader``, else few (they only draw in-memory batches)."""
    steps = check.sizes.speed_warmup + check.sizes.speed_steps
    overrides = [
        "experiment=gpu",
        *check.overrides(),
        *bench_overrides(False, steps),
        "scheduler.warmup_epochs=0",
        "callbacks.last_checkpoint=null",
        f"data.batch_size={batch}",
        f"data.samples_per_epoch={batch * steps}",
    ]
    if not real_loader:
        overrides.append("data.num_workers=2" if not check.sizes.tiny else "data.num_workers=0")
    name = f"speed_b{batch}{'_loader' if real_loader else ''}"
    return compose_config("train", overrides, check.scratch / name, check.data_dir)


def section_speed(check: Check) -> dict[str, Any]:
    """(c) Lightning / plain step ratio, images/s, MFU, torch.compile (the loader against the
    GPU: the experiment section's ``step_rate``)."""
    sizes = check.sizes
    start = time.perf_counter()

    def time_left() -> float:
        spent = time.perf_counter() - start
        return min(sizes.speed_seconds - spent, check.remaining() - sizes.inference_reserve_s)

    result = speed.measure(
        lambda batch: _speed_config(check, batch, False),
        batch_sizes=sizes.speed_batches,
        steps=sizes.speed_steps,
        warmup=sizes.speed_warmup,
        device=check.device,
        matmul_size=sizes.matmul_size,
        compile_batch=sizes.compile_batch,
        compile_backend=sizes.compile_backend,
        time_left=time_left,
        min_seconds_per_batch=sizes.speed_min_seconds_per_batch,
        compile_min_seconds=sizes.compile_min_seconds,
    )
    result["ok"] = all("skipped" not in v for v in result["batches"].values())
    return result


def epochs_for(
    step_s: float, train_s: float, per_epoch: int, max_epochs: int, warmup: int, sizes: Sizes
) -> tuple[int, int]:
    """``(max_epochs, warmup_epochs)`` whose steps of ``step_s`` fill ``sizes.step_share`` of
    ``train_s`` (at most the recipe's ``max_epochs``, at least ``sizes.min_epochs``), the
    warm-up keeping the recipe's share of the epochs (at least one)."""
    epochs = int(sizes.step_share * train_s / (step_s * per_epoch))
    epochs = max(sizes.min_epochs, min(epochs, max_epochs))
    return epochs, max(1, min(round(warmup / max_epochs * epochs), epochs - 1))


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _recipe() -> DictConfig:
    """conf/experiment/gpu.yaml as composed, without this check's overrides."""
    return compose_config("train", ["experiment=gpu", "model.encoder_weights=null"])


def _training_seconds(check: Check, wanted: float) -> float:
    """``wanted``, or less: what the budget has left after the experiment's start-up and
    export and the later sections' allowances."""
    sizes = check.sizes
    available = check.remaining() - sizes.reserve_after_experiment_s - sizes.experiment_extra_s
    return min(wanted, available)


def section_experiment(check: Check) -> dict[str, Any]:
    """(e) The recipe's step time and loader rate on the GPU (:func:`speed.recipe_rate`), then
    ``train.py experiment=gpu`` for a fixed number of minutes, its epochs sized so that the
    cosine schedule ends in them; its best checkpoint as fp16 parts, its small files as
    ``gpu_run.tar.gz`` into ``<out>``."""
    sizes = check.sizes
    wanted = 60.0 * (check.args.train_minutes or sizes.train_minutes)
    if _training_seconds(check, wanted) < 0.25 * wanted:
        return {"skipped": f"{check.remaining():.0f} s left of the budget: too few to train"}
    run_dir = check.scratch / "experiment"
    batch = sizes.recipe_batch or int(_recipe().data.batch_size)
    rate = speed.recipe_rate(
        _speed_config(check, batch, True),
        sizes.speed_steps,
        sizes.speed_warmup,
        sizes.loader_batches,
    )
    train_s = _training_seconds(check, wanted)
    argv = [
        "train.py",
        "experiment=gpu",
        *check.overrides(),
        *sizes.experiment_overrides,
        # The settings search runs on the CPU afterwards (make gpu-eval): its 3D medians are
        # CPU work, minutes of GPU time here.
        "choose_settings=false",
        f"trainer.max_time={_hms(train_s)}",
        f"hydra.run.dir={run_dir}",
    ]
    sized = None
    if not sizes.experiment_overrides:  # the dry run keeps its own short schedule
        recipe = _recipe()
        trainer, scheduler = recipe.trainer, recipe.scheduler
        sized = epochs_for(
            rate["lightning"]["step_s"]["median"],
            train_s,
            int(trainer.limit_train_batches),
            int(trainer.max_epochs),
            int(scheduler.warmup_epochs),
            sizes,
        )
        argv += [f"trainer.max_epochs={sized[0]}", f"scheduler.warmup_epochs={sized[1]}"]
    result = run_command(check, "experiment", argv, train_s + sizes.experiment_extra_s)
    result.update({"step_rate": rate, "train_seconds_asked": train_s, "epochs_sized": sized})
    finished = (run_dir / "metrics.json").exists()
    if finished:
        summary = json.loads((run_dir / "metrics.json").read_text())
        result["metrics"] = summary["metrics"]
    # A run stopped at its timeout still returns its best checkpoint so far.
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if best:
        result["best_checkpoint"] = best[-1].name
        result["weights"] = weights.export_parts(best[-1], check.out)
    result["archive"] = _archive(run_dir, check.out / "gpu_run.tar.gz")
    result["ok"] = result["returncode"] == 0 and finished and bool(best)
    return result


def _archive(run_dir: Path, path: Path) -> dict[str, Any]:
    """The run's :data:`RUN_FILES` and TensorBoard events as ``path`` (the events left out
    when the archive would exceed :data:`TAR_BYTES`)."""
    for with_events in (True, False):
        with tarfile.open(path, "w:gz") as tar:
            for name in RUN_FILES:
                if (run_dir / name).exists():
                    tar.add(run_dir / name, arcname=f"gpu_run/{name}")
            if with_events and (run_dir / "tb").exists():
                tar.add(run_dir / "tb", arcname="gpu_run/tb")
        if path.stat().st_size <= TAR_BYTES:
            break
    return {"bytes": path.stat().st_size, "tensorboard_events": with_events}


def _inference_checkpoint(check: Check) -> Path | None:
    """The experiment's best checkpoint, else a sweep job's last one (speed only)."""
    best = sorted((check.scratch / "experiment" / "checkpoints").glob("best-*.ckpt"))
    if best:
        return best[-1]
    found = sorted((check.scratch / "multirun").glob("*/checkpoints/last.ckpt"))
    return found[0] if found else None


def section_inference(check: Check) -> dict[str, Any]:
    """(d) Whole-volume inference (slices/s) on the GPU: the pipeline of eval.py / predict.py
    and a bare forward pass per slice, over the staged training slices (test-sized frames)."""
    from benchmarks.bench.infer_worker import run_job  # the inference pipeline

    ckpt = _inference_checkpoint(check)
    if ckpt is None:
        return {"skipped": "no checkpoint (neither the experiment nor the sweep wrote one)"}
    volume = check.data_dir / "epfl" / "training.tif"
    result: dict[str, Any] = {"checkpoint": str(ckpt), "volume": str(volume)}
    for kind in ("predictor", "plain"):
        log(f"inference: {kind} on {volume}")
        job = {
            "kind": kind,
            "input": str(volume),
            "ckpt": str(ckpt),
            "settings": {"device": check.device.type},
            "limit": check.sizes.inference_slices,
        }
        result[kind] = run_job(job)
        del result[kind]["slice_seconds"]
    result["pipeline_over_plain"] = (
        result["predictor"]["median_slice_s"] / result["plain"]["median_slice_s"]
    )
    result["ok"] = True
    return result


RUNNERS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "gpu_tests": section_gpu_tests,
    "multirun": section_multirun,
    "speed": section_speed,
    "experiment": section_experiment,
    "inference": section_inference,
}


def gpu_environment() -> dict[str, Any]:
    """The GPU, driver, CUDA / cuDNN and torch versions (nvidia-smi where it exists)."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            capability=list(torch.cuda.get_device_capability(0)),
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    return info


def _prepare_data(args: argparse.Namespace, sizes: Sizes, scratch: Path) -> tuple[Path, dict]:
    """The data directory of the check: a stage unpacked, a given data/, or (dry run) a
    synthetic volume staged and unpacked the same way."""
    if args.data_dir is not None:
        return args.data_dir, {"data_dir": str(args.data_dir)}
    source = args.stage
    if source is None:
        if not args.dry_run:
            raise ConfigError("give --stage DIR (make gpu-stage) or --data-dir DIR")
        synthetic = synthetic_data(scratch / "synthetic")
        source = scratch / "stage"
        stage.build(synthetic, source, sizes.stage_slices, with_wheels=False)
    log(f"data: unpacking {source}")
    manifest = stage.unpack(source, scratch / "data")
    return scratch / "data", {"stage": str(source), "manifest": manifest}


def _summary(results: dict[str, Any]) -> list[str]:
    """The few lines a reader wants first (printed at the end of the log)."""
    lines = [f"GPU check: {results.get('gpu', {}).get('name', 'no GPU (dry run)')}"]
    for name in SECTIONS:
        section = results.get(name)
        if section is None:
            continue
        state = "skipped" if "skipped" in section else "ok" if section.get("ok") else "FAILED"
        lines.append(f"  {name}: {state}")
    for batch, row in (results.get("speed") or {}).get("batches", {}).items():
        if "images_per_s" in row:
            mfu = row.get("mfu_measured")
            lines.append(
                f"  batch {batch}: Lightning/plain {row['lightning_ratio']:.3f}, "
                f"{row['images_per_s']:.1f} images/s"
                + (f", MFU {100 * mfu:.1f} % of the measured bf16 peak" if mfu else "")
            )
    metrics = (results.get("experiment") or {}).get("metrics") or {}
    if metrics:
        lines.append(
            f"  experiment=gpu: {metrics.get('global_step')} steps, val fg IoU best "
            f"{metrics.get('val/best_fg_iou')}, fit {metrics.get('fit_seconds')} s"
        )
    return lines


def _record(check: Check, name: str, section: Callable[[Check], dict[str, Any]]) -> None:
    """Run one section into ``check.results[name]`` (an exception recorded, not raised) and
    rewrite report.json."""
    log(f"{name}: start ({check.remaining():.0f} s of the budget left)")
    t0 = time.perf_counter()
    try:
        check.results[name] = section(check)
    except Exception as err:  # recorded; the next section still runs
        log(f"{name}: FAILED: {traceback.format_exc()}")
        check.results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    check.results[name]["section_seconds"] = time.perf_counter() - t0
    check.write()


def run(args: argparse.Namespace, sizes: Sizes | None = None) -> int:
    """Run the selected sections; write ``report.json``; return the exit status.

    Args:
        sizes: instead of :data:`FULL` / :data:`DRY` (the CPU tests' smaller dry run).
    """
    sizes = sizes or (DRY if args.dry_run else FULL)
    if not args.dry_run and not torch.cuda.is_available():
        raise ConfigError("no CUDA device is visible: the GPU check needs one (--dry-run: CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    out = args.out or PROJECT_ROOT / (
        "outputs/gpu_check_dry" if args.dry_run else "outputs/gpu_check"
    )
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="emseg-gpu-check-"))
    scratch.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")
    check = Check(args, sizes, out, scratch, Path(), device)
    data_dir, data_info = _prepare_data(args, sizes, scratch)
    check.data_dir = data_dir
    check.results.update(
        command="python -m benchmarks.gpu_check " + " ".join(map(shlex.quote, sys.argv[1:])),
        dry_run=bool(args.dry_run),
        sizes=asdict(sizes),
        budget_s=check.budget_s,
        data=data_info,
        gpu=gpu_environment(),
        environment=environment(),
    )
    check.write()
    selected = args.sections.split(",")
    # The gpu tests (a second process) run while the sweep runs: neither is timed.
    background = None
    if {"gpu_tests", "multirun"} <= set(selected) and not args.in_process:
        background = start_gpu_tests(check)
    for name in (s for s in SECTIONS if s in selected):
        if name == "gpu_tests" and background is not None:
            continue
        _record(check, name, RUNNERS[name])
        if name == "multirun" and background is not None:
            _record(check, "gpu_tests", lambda c: section_gpu_tests(c, background))
    lines = _summary(check.results)
    print("\n".join(lines), flush=True)
    ran = [check.results[s] for s in SECTIONS if s in selected]
    # On a GPU a skipped section is missing evidence; in the dry run it is expected.
    return 0 if all(r.get("ok") or ("skipped" in r and args.dry_run) for r in ran) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: arguments, run, one-line errors for what the user can fix."""
    args = parse_args(argv)
    try:
        return run(args)
    except EmsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
