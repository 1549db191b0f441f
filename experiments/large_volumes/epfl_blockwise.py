"""The EPFL test volume as a Zarr store, predicted blockwise with 1 and 2 workers (issue 18).

Run from the repository root::

    .venv/bin/python -m experiments.large_volumes.epfl_blockwise \
        --ckpt /work/runs/fast/checkpoints/best-epoch025-fg_iou0.8744.ckpt --out /tmp/lv_epfl

1. writes data/epfl/testing.tif as a Zarr array (chunks 1 x 256 x 256, voxel size 5 nm in
   OME-Zarr style attributes are not needed: predict.py reads the checkpoint's voxel size);
2. predicts it with predict.py into a TIFF, one process, one torch thread (the reference);
3. predicts it blockwise, blocks of 10 slices (17 blocks), with 1 worker x 1 thread and with
   2 workers x 1 thread, the checkpoint's own settings (chosen on validation: border_pad 0,
   3D median 7, halo 1 + 3 slices);
4. compares each store's probabilities and mask with the reference, voxel for voxel;
5. scores the 2-worker store against the test labels with ``eval.py prediction=`` (no model).

Writes ``experiments/large_volumes/epfl_blockwise.json``.
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
import tifffile
import zarr

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]
BLOCK = 10


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return time.perf_counter() - start


def predict(ckpt: Path, source: Path, output: Path, *extra: str) -> list[str]:
    args = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", "overwrite=true"]
    args += [f"hydra.run.dir={output}.hydra", *QUIET, *extra]
    return [sys.executable, str(ROOT / "predict.py"), *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    image = tifffile.imread(ROOT / "data/epfl/testing.tif")
    source = out / "testing.zarr"
    if not source.exists():
        zarr.create_array(str(source), data=image, chunks=(1, 256, 256))
    results: dict[str, object] = {"shape": list(image.shape), "block_slices": BLOCK}
    reference_tif, mask_tif = out / "reference.tif", out / "reference_mask.tif"
    seconds = run(
        predict(args.ckpt, source, reference_tif, f"mask_output={mask_tif}", "torch_threads=1"),
        out / "reference.log",
    )
    results["single_process_1_thread_s"] = seconds
    reference = {"probabilities": tifffile.imread(reference_tif), "mask": tifffile.imread(mask_tif)}
    for name, extra in {
        "1_worker_x_1_thread": ["blockwise.workers=1", "torch_threads=1"],
        "2_workers_x_1_thread": ["blockwise.workers=2"],
    }.items():
        store = out / f"{name}.zarr"
        log = out / f"{name}.log"
        seconds = run(
            predict(args.ckpt, source, store, f"blockwise.block_slices={BLOCK}", *extra), log
        )
        text = log.read_text()
        match = re.search(r"(\d+) blocks done now, (\d+) before", text)
        differing = {
            key: int(np.count_nonzero(zarr.open_array(str(store / key / "0"))[:] != expected))
            for key, expected in reference.items()
        }
        results[name] = {
            "seconds": seconds,
            "blocks_done": int(match[1]) if match else None,
            "differing_voxels": differing,
            "progress_lines": [line for line in text.splitlines() if "blocks |" in line][-2:],
        }
        print(name, results[name], flush=True)
    scores = out / "scores"
    command = [
        sys.executable,
        str(ROOT / "eval.py"),
        f"prediction={out / '2_workers_x_1_thread.zarr'}",
        f"hydra.run.dir={scores}",
        *QUIET,
    ]
    results["eval_command"] = " ".join(command[1:])
    results["eval_seconds"] = run(command, out / "eval.log")
    metrics = json.loads((scores / "metrics.json").read_text())
    results["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    path = ROOT / "experiments/large_volumes/epfl_blockwise.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
