"""Peak memory of each worker against the volume's depth (a small-scale check of issue 18's
"RSS per worker flat"): the same blockwise prediction of a (Z, 256, 256) uint8 volume for
several Z, 2 workers x 1 thread, blocks of 16 slices, 3x3x3 median::

    nice -n 19 .venv/bin/python -m experiments.large_volumes.memory_vs_depth \\
        --ckpt /tmp/lv/run/checkpoints/last.ckpt --out /tmp/lv_mem --depths 64 1024

(the checkpoint: the tiny one kill_and_resume trains). Prints and writes memory.json: per
depth the wall seconds, voxels per second and each worker's peak RSS (logged by the worker).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--depths", type=int, nargs="+", default=[64, 1024])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for depth in args.depths:
        source = args.out / f"in{depth}.zarr"
        array = zarr.create_array(
            str(source), shape=(depth, 256, 256), chunks=(1, 256, 256), dtype="uint8",
            overwrite=True,
        )  # fmt: skip
        rng = np.random.default_rng(depth)
        for z0 in range(0, depth, 64):  # written in pieces: memory here stays small too
            z1 = min(depth, z0 + 64)
            array[z0:z1] = np.clip(rng.normal(120, 30, (z1 - z0, 256, 256)), 0, 255)
        output = args.out / f"out{depth}.zarr"
        command = [sys.executable, str(ROOT / "predict.py"), f"ckpt_path={args.ckpt}"]
        command += [f"input={source}", f"output={output}", "overwrite=true", "progress=false"]
        command += ["postprocess.median_size=3", "inference.precision=32-true"]
        command += ["blockwise.workers=2", "blockwise.block_slices=16"]
        command += [f"hydra.run.dir={output}.hydra"]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        seconds = time.perf_counter() - start
        logs = (args.out / f"out{depth}.zarr.blockwise" / "logs").rglob("worker_*.err")
        peaks = sorted(
            float(m)
            for log in logs
            for m in re.findall(r"peak RSS of this worker (\d+) MiB", log.read_text())
        )
        rows.append(
            {
                "depth": depth,
                "megabytes": depth * 256 * 256 / 1e6,
                "seconds": seconds,
                "voxels_per_s": depth * 256 * 256 / seconds,
                "worker_peak_rss_mib": peaks,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
