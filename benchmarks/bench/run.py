"""``python -m benchmarks.bench [--quick] [--out DIR] ...``: run every section, write bench.json and
bench.md, print the report. See :mod:`benchmarks.bench` for what is measured and why."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from omegaconf import DictConfig

from benchmarks.bench import pipeline, startup, training
from benchmarks.bench.common import TRAIN_OVERRIDES, compose_config, log
from benchmarks.bench.env import environment, machine_busy_seconds, own_cpu_seconds
from benchmarks.bench.report import render, targets
from emseg.io.atomic import atomic_path, write_json_atomic
from emseg.resolvers import PROJECT_ROOT

__all__ = ["Bench", "main", "parse_args", "run", "skip_reason"]

SECTIONS = ("training", "data", "startup", "inference", "quality")
# Sections that run a trained model: only on the checkpoint given with --ckpt.
NEEDS_CHECKPOINT = ("inference", "quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; unknown sections and a missing ``--ckpt`` file are usage errors."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic sizes, seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: experiments/bench (--quick: outputs/bench_quick)",
    )
    parser.add_argument(
        "--ckpt",
        default=None,
        help="trained checkpoint for the inference and quality sections (skipped without one)",
    )
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
    if args.ckpt:
        if not Path(args.ckpt).is_file():
            parser.error(f"--ckpt {args.ckpt}: no such file")
        args.ckpt = str(Path(args.ckpt).resolve())  # the workers run from the repository root
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


@dataclass
class Bench:
    """What the sections share: arguments, run sizes, scratch space, the timed training config
    and the results so far (the data section reads the training section's step time)."""

    args: argparse.Namespace
    sizes: dict[str, Any]
    scratch: Path
    data_dir: Path | None
    overrides: list[str]
    results: dict[str, Any]

    def train_config(self, name: str) -> DictConfig:
        """conf/train.yaml with the bench overrides, writing into ``<scratch>/<name>``."""
        return compose_config("train", self.overrides, self.scratch / name, self.data_dir)


def run_training(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    return training.run(
        bench.train_config("train"),
        bench.train_config("train_real"),
        sizes["steps"],
        sizes["warmup"],
        sizes["grid_steps"],
        sizes["profile_steps"],
    )


def run_data(bench: Bench) -> dict[str, Any]:
    log("data: loader throughput")
    cfg, sizes = bench.train_config("train"), bench.sizes
    data = pipeline.loader_throughput(cfg, sizes["loader_batches"], sizes["loader_warmup"])
    step = (bench.results.get("training") or {}).get("lightning", {}).get("step_s", {})
    if "median" in step:
        data["model_samples_per_s"] = int(cfg.data.batch_size) / step["median"]
        data["loader_over_model"] = data["samples_per_s"] / data["model_samples_per_s"]
    return data


def run_startup(bench: Bench) -> dict[str, Any]:
    log("startup: python train.py to the first step")
    return startup.measure_startup(bench.scratch / "startup")


def run_inference(bench: Bench) -> dict[str, Any]:
    from benchmarks.bench import inference  # the inference pipeline: only with a checkpoint

    sizes = bench.sizes
    return inference.timing(
        Path(bench.train_config("train").data.test_image),
        bench.args.ckpt,
        bench.scratch,
        test_slices=sizes["test_slices"],
        subset_slices=sizes["subset_slices"],
        big_shape=sizes["big_shape"],
        big_slices=sizes["big_slices"],
        big_plain_slices=sizes["big_plain_slices"],
        isolate=not bench.args.quick,
    )


def run_quality(bench: Bench) -> dict[str, Any]:
    from benchmarks.bench import inference  # the inference pipeline: only with a checkpoint

    data = bench.train_config("train").data
    return inference.validation_quality(
        Path(data.train_image), Path(data.train_mask), int(data.val_slices), bench.args.ckpt
    )


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "training": run_training,
    "data": run_data,
    "startup": run_startup,
    "inference": run_inference,
    "quality": run_quality,
}


def skip_reason(name: str, args: argparse.Namespace) -> str | None:
    """Why section ``name`` does not run with these arguments (``None``: it runs)."""
    if name == "startup" and args.quick:
        return "quick mode (start-up of the full configuration only)"
    if name in NEEDS_CHECKPOINT and not args.ckpt:
        return "no --ckpt given (make bench CKPT=<a trained best-*.ckpt>)"
    return None


def _run_sections(bench: Bench, partial: Path | None) -> None:
    """Run the selected sections in order into ``bench.results``; a failure in a full run is
    recorded and the other sections still run (quick runs, i.e. the tests, raise it)."""
    selected = bench.args.sections.split(",")
    for name in (s for s in SECTIONS if s in selected):
        reason = skip_reason(name, bench.args)
        if reason is not None:
            log(f"{name}: skipped: {reason}")
            bench.results[name] = {"skipped": reason}
            continue
        try:
            bench.results[name] = RUNNERS[name](bench)
        except Exception as err:
            if bench.args.quick:
                raise
            log(f"{name}: FAILED: {traceback.format_exc()}")
            bench.results[name] = {"error": f"{type(err).__name__}: {err}"}
        if partial is not None:
            write_json_atomic(partial, jsonable(bench.results))


def jsonable(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with every value JSON can not represent (paths, dtypes) as its string."""
    return json.loads(json.dumps(results, default=str))


def run(args: argparse.Namespace, partial: Path | None = None) -> dict[str, Any]:
    """Run the selected sections and return the results.

    Args:
        partial: file to rewrite with the results so far after every section.
    """
    sizes = _sizes(args)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="emseg-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    busy_start, own_start = machine_busy_seconds(), own_cpu_seconds()
    compose_config("train", TRAIN_OVERRIDES)  # the process's first (cold) Hydra compose
    hydra_compose_s = time.perf_counter() - started
    results: dict[str, Any] = {
        "command": "python -m benchmarks.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "quick": bool(args.quick),
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "environment": environment(),
        "hydra_compose_s": hydra_compose_s,
    }
    log(f"environment: {results['environment']}")
    overrides = [
        *TRAIN_OVERRIDES,
        *training.bench_overrides(args.quick, sizes["warmup"] + sizes["steps"]),
    ]
    try:
        data_dir = synthetic_data(scratch / "data") if args.quick else None
        _run_sections(Bench(args, sizes, scratch, data_dir, overrides, results), partial)
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
    """Run the benchmark, write ``bench.json`` and ``bench.md`` into ``--out``, print the report."""
    args = parse_args(argv)
    torch.set_float32_matmul_precision("high")
    # The committed record lives in experiments/bench; quick runs must never overwrite it.
    default_out = "outputs/bench_quick" if args.quick else "experiments/bench"
    out = args.out or PROJECT_ROOT / default_out
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "bench.partial.json"
    results = jsonable(run(args, partial))
    partial.unlink(missing_ok=True)
    write_json_atomic(out / "bench.json", results)
    report = render(results)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(report)
    print(report)
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {results['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
