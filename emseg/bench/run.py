"""``python -m emseg.bench [--quick] [--out DIR] ...``: run every section, write bench.json and
bench.md, print the report. See :mod:`emseg.bench` for what is measured and why."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import tifffile
import torch

from emseg.bench import inference, pipeline, startup, training
from emseg.bench.common import TRAIN_OVERRIDES, compose_config, log
from emseg.bench.env import environment, machine_busy_seconds, own_cpu_seconds
from emseg.bench.report import render, targets
from emseg.hardware import auto_channels_last, auto_precision
from emseg.resolvers import PROJECT_ROOT

__all__ = ["main", "parse_args", "run"]

SECTIONS = ("training", "data", "startup", "inference", "quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emseg.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic sizes, seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: experiments/bench (--quick: outputs/bench_quick)",
    )
    parser.add_argument("--ckpt", default=None, help="checkpoint for the fg IoU comparison")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps")
    parser.add_argument("--test-slices", type=int, default=None, help="default: all")
    parser.add_argument("--subset-slices", type=int, default=None, help="TTA / tiled / naive")
    parser.add_argument("--big-shape", default=None, help="Z,Y,X of the synthetic volume")
    parser.add_argument("--big-slices", type=int, default=None)
    parser.add_argument("--no-big", action="store_true", help="skip the synthetic volume")
    parser.add_argument("--scratch", type=Path, default=None, help="for temporary files")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    """Run sizes: the full defaults (~15 min on the 2-core Xeon) or the quick ones."""
    quick = args.quick
    big = args.big_shape or ("3,160,200" if quick else "200,2048,2048")
    return {
        "steps": args.steps or (3 if quick else 20),
        "warmup": args.warmup or (1 if quick else 5),
        "grid_steps": 2 if quick else 10,
        "profile_steps": 1 if quick else 3,
        "loader_batches": 5 if quick else 100,
        "loader_warmup": 1 if quick else 10,
        "test_slices": args.test_slices,
        "subset_slices": args.subset_slices or (1 if quick else 16),
        "big_shape": None if args.no_big else tuple(int(v) for v in big.split(",")),
        "big_slices": args.big_slices or (1 if quick else 4),
        "big_plain_slices": 1 if quick else 2,
    }


def synthetic_data(root: Path, depth: int = 10, height: int = 96, width: int = 128) -> Path:
    """A tiny EPFL-like data directory (bright ellipses on noise) for ``--quick``."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    (root / "epfl").mkdir(parents=True, exist_ok=True)
    for split in ("training", "testing"):
        mask = np.zeros((depth, height, width), bool)
        for _ in range(4):
            cy, cx = rng.uniform(0.2, 0.8, 2) * (height, width)
            ry, rx = rng.uniform(0.08, 0.15, 2) * height
            mask |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)[None]
        image = np.clip(np.where(mask, 200, 90) + rng.normal(0, 12, mask.shape), 0, 255)
        tifffile.imwrite(root / "epfl" / f"{split}.tif", image.astype(np.uint8))
        tifffile.imwrite(root / "epfl" / f"{split}_groundtruth.tif", mask.astype(np.uint8) * 255)
    return root


def find_checkpoint() -> str | None:
    """The newest ``best-*.ckpt`` under ``outputs/`` (a trained model for the fg IoU check)."""
    found = sorted(
        (PROJECT_ROOT / "outputs").glob("**/checkpoints/best*.ckpt"),
        key=lambda p: p.stat().st_mtime,
    )
    return str(found[-1]) if found else None


def cuda_precision_rule() -> dict[str, Any]:
    """What the config's ``auto`` precision resolves to on a CUDA machine, with and without
    bf16 (simulated: this checks emseg.hardware's rule and the config resolver, not a GPU)."""
    rule = {}
    with mock.patch("torch.cuda.is_available", return_value=True):
        for bf16 in (True, False):
            with mock.patch("torch.cuda.is_bf16_supported", return_value=bf16):
                cfg = compose_config("train", TRAIN_OVERRIDES)
                precision = str(cfg.trainer.precision)
                rule[f"cuda, bf16 supported={bf16}"] = {
                    "trainer.precision": precision,
                    "channels_last": bool(cfg.channels_last),
                    "auto_precision": auto_precision("gpu"),
                    "auto_channels_last": auto_channels_last(precision, "gpu"),
                }
    cfg = compose_config("train", TRAIN_OVERRIDES)
    rule["this machine"] = {
        "trainer.precision": str(cfg.trainer.precision),
        "channels_last": bool(cfg.channels_last),
    }
    return rule


def run(args: argparse.Namespace, partial: Path | None = None) -> dict[str, Any]:
    """Run the selected sections and return the results.

    Args:
        partial: file to rewrite with the results so far after every section.
    """
    sizes = _sizes(args)
    sections = args.sections.split(",")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="emseg-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    data_dir = synthetic_data(scratch / "data") if args.quick else None
    ckpt = args.ckpt if args.ckpt else (None if args.quick else find_checkpoint())
    started = time.perf_counter()
    busy_start, own_start = machine_busy_seconds(), own_cpu_seconds()
    compose_config("train", TRAIN_OVERRIDES)  # the process's first (cold) Hydra compose
    hydra_compose_s = time.perf_counter() - started
    results: dict[str, Any] = {
        "command": "python -m emseg.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "quick": bool(args.quick),
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "environment": environment(),
        "precision_rule": cuda_precision_rule(),
        "hydra_compose_s": hydra_compose_s,
    }
    log(f"environment: {results['environment']}")
    steps, warmup = sizes["steps"], sizes["warmup"]
    overrides = [*TRAIN_OVERRIDES, *training.bench_overrides(args.quick, warmup + steps)]
    cfg = compose_config("train", overrides, scratch / "train", data_dir)

    def run_training() -> dict[str, Any]:
        real = compose_config("train", overrides, scratch / "train_real", data_dir)
        return training.run(cfg, real, steps, warmup, sizes["grid_steps"], sizes["profile_steps"])

    def run_data() -> dict[str, Any]:
        log("data: loader throughput")
        data = pipeline.loader_throughput(cfg, sizes["loader_batches"], sizes["loader_warmup"])
        step = (results.get("training") or {}).get("lightning", {}).get("step_s", {})
        if "median" in step:
            data["model_samples_per_s"] = int(cfg.data.batch_size) / step["median"]
            data["loader_over_model"] = data["samples_per_s"] / data["model_samples_per_s"]
        return data

    def run_startup() -> dict[str, Any]:
        log("startup: python train.py to the first step")
        return startup.measure_startup(scratch / "startup")

    def run_inference() -> dict[str, Any]:
        return inference.timing(
            Path(cfg.data.test_image),
            ckpt,
            scratch,
            test_slices=sizes["test_slices"],
            subset_slices=sizes["subset_slices"],
            big_shape=sizes["big_shape"],
            big_slices=sizes["big_slices"],
            big_plain_slices=sizes["big_plain_slices"],
            isolate=not args.quick,
        )

    def run_quality() -> dict[str, Any]:
        return inference.validation_quality(
            Path(cfg.data.train_image), Path(cfg.data.train_mask), int(cfg.data.val_slices), ckpt
        )

    runners = {
        "training": run_training,
        "data": run_data,
        "startup": run_startup,
        "inference": run_inference,
        "quality": run_quality,
    }
    try:
        for name in SECTIONS:
            if name not in sections or (name == "startup" and args.quick):
                continue
            try:
                results[name] = runners[name]()
            except Exception as err:
                if args.quick:  # the tests must see failures
                    raise
                # A long run keeps the other sections' numbers; the report shows the error.
                log(f"{name}: FAILED: {traceback.format_exc()}")
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            if partial is not None:
                partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    results["bench_seconds"] = time.perf_counter() - started
    busy_end = machine_busy_seconds()
    if busy_start is not None and busy_end is not None:
        # CPU time the rest of the machine used meanwhile (loader workers still alive are
        # counted as others): a check that nothing else distorted the timings.
        own = own_cpu_seconds() - own_start
        results["other_cpu_seconds"] = max(busy_end - busy_start - own, 0.0)
        results["own_cpu_seconds"] = own
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_float32_matmul_precision("high")
    # The committed record lives in experiments/bench; quick runs must never overwrite it.
    default_out = "outputs/bench_quick" if args.quick else "experiments/bench"
    out = args.out or PROJECT_ROOT / default_out
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "bench.partial.json"
    results = run(args, partial)
    partial.unlink(missing_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = render(results)
    (out / "bench.md").write_text(report)
    print(report)
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {results['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
