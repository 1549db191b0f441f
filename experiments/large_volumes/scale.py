"""Blockwise prediction of a >= 20 GB volume with bounded memory per worker (issue 18).

Run from the repository root::

    .venv/bin/python -m experiments.large_volumes.scale --out /data/lv_scale --gb 1 20

1. trains a one-layer checkpoint (``model=conv``: a single 3 x 3 convolution, 2.5D context 1,
   two steps on the EPFL training volume) unless --ckpt is given. It measures the engine, the
   I/O and the memory, not a network: on these 2 CPU cores the tiny U-Net predicted 0.51 M
   voxels/s (memory_vs_depth.py), 20 GB would take ~11 hours (README.md);
2. writes a synthetic uint8 Zarr volume of (Z, 2560, 3072) for each size in --gb (GB = 1e9
   voxels): the EPFL training slices tiled in y and x and cycled in z, chunks 16 x 512 x 512;
3. predicts each blockwise into a mask-only store (chunks 16 x 512 x 512, blocks of 16 slices,
   y / x tiles of 1024 x 1024, the sliding window tiled at 512 with the default Gaussian
   blend), 2 workers x 1 thread; the smallest also with 1 worker x 2 threads;
4. records wall time, voxels/s and each worker's peak RSS (its own log line) in scale.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]
SHAPE_YX = (2560, 3072)
CHUNKS = (16, 512, 512)
CONV = ["model=conv"]


def train(out: Path) -> Path:
    run_dir = out / "conv_run"
    args = [*CONV, "data.context=1", "data.patch_size=64", "data.batch_size=2"]
    args += ["data.num_workers=0", "data.samples_per_epoch=4", "trainer.max_epochs=1"]
    args += ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none"]
    args += ["trainer.num_sanity_val_steps=0", "test_after_fit=false", "choose_settings=false"]
    args += ["callbacks.validation_images=null", f"hydra.run.dir={run_dir}", *QUIET]
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, check=True)
    return run_dir / "checkpoints" / "last.ckpt"


def write_volume(path: Path, gb: float) -> tuple[int, int, int]:
    """A (Z, 2560, 3072) uint8 store of >= gb * 1e9 voxels, EPFL slices tiled and cycled."""
    depth = int(np.ceil(gb * 1e9 / (SHAPE_YX[0] * SHAPE_YX[1]) / CHUNKS[0])) * CHUNKS[0]
    shape = (depth, *SHAPE_YX)
    if (path / "zarr.json").exists() and zarr.open_array(str(path)).shape == shape:
        return shape
    training = tifffile.imread(ROOT / "data/epfl/training.tif")
    array = zarr.create_array(str(path), shape=shape, chunks=CHUNKS, dtype="uint8", overwrite=True)
    reps = (1, -(-SHAPE_YX[0] // training.shape[1]), -(-SHAPE_YX[1] // training.shape[2]))
    for z0 in range(0, depth, CHUNKS[0]):
        slab = training[[(z0 + i) % len(training) for i in range(CHUNKS[0])]]
        array[z0 : z0 + CHUNKS[0]] = np.tile(slab, reps)[:, : SHAPE_YX[0], : SHAPE_YX[1]]
    return shape


def predict(ckpt: Path, source: Path, output: Path, workers: int, threads: int) -> dict:
    args = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", "overwrite=true"]
    args += ["blockwise.arrays=[mask]", f"blockwise.chunks={list(CHUNKS)}".replace(" ", "")]
    args += ["blockwise.block_slices=16", "blockwise.block_yx=1024", "progress=true"]
    args += [f"blockwise.workers={workers}", "inference.precision=32-true"]
    args += [f"torch_threads={threads}", f"hydra.run.dir={output}.hydra", *QUIET]
    log = output.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, str(ROOT / "predict.py"), *args],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=True,
        )
    seconds = time.perf_counter() - start
    logs = sorted((output.parent / f"{output.name}.blockwise" / "logs").rglob("worker_*.err"))
    rss = [
        float(m[1])
        for p in logs
        for m in re.finditer(r"peak RSS of this worker (\d+) MiB", p.read_text())
    ]
    blocks = [
        float(m[1]) for p in logs for m in re.finditer(r"written in ([\d.]+) s", p.read_text())
    ]
    lines = [line for line in log.read_text().splitlines() if "blocks |" in line]
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "seconds": seconds,
        "blocks": len(blocks),
        "median_block_s": float(np.median(blocks)) if blocks else None,
        "peak_rss_mib_per_worker": rss,
        "last_progress_line": lines[-1] if lines else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gb", type=float, nargs="+", default=[1.0, 20.0])
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the volumes and stores")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt or train(args.out)
    path = ROOT / "experiments/large_volumes/scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["model"] = "one 3x3 convolution (2.5D context 1), float32"
    for index, gb in enumerate(sorted(args.gb)):
        source = args.out / f"volume_{gb:g}gb.zarr"
        start = time.perf_counter()
        shape = write_volume(source, gb)
        voxels = int(np.prod(shape))
        runs = {"2x1": (2, 1)} if index else {"2x1": (2, 1), "1x2": (1, 2)}
        entry = {"shape": list(shape), "voxels": voxels, "write_s": time.perf_counter() - start}
        for name, (workers, threads) in runs.items():
            output = args.out / f"mask_{gb:g}gb_{name}.zarr"
            run = predict(ckpt, source, output, workers, threads)
            run["voxels_per_s"] = voxels / run["seconds"]
            entry[name] = run
            print(gb, name, run, flush=True)
            if not args.keep:
                shutil.rmtree(output, ignore_errors=True)
        results[f"{gb:g}GB"] = entry
        path.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(source, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
