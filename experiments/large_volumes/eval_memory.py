"""Peak memory of ``eval.py prediction=<store>`` against the volume's depth (issue 18, item 7):
a synthetic blockwise store of a (Z, 256, 256) volume (uint8 probabilities and mask, chunks
1 x 256 x 256, as predict.py writes it) scored against (Z, 256, 256) uint8 Zarr labels, each
depth in its own eval.py process (no checkpoint, no model)::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m experiments.large_volumes.eval_memory \\
        --out /tmp/lv_eval --depths 128 2048

Prints and writes eval_memory.json (next to this script unless ``--record`` says otherwise):
per depth the bytes of one stored array, eval.py's wall seconds, voxels scored per second, the
peak RSS of the eval.py process (``wait4``'s ``ru_maxrss``) and its fg IoU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[2]
SIZE = 256


def write_volume(out: Path, depth: int) -> tuple[Path, Path]:
    """The store ``p<depth>.zarr`` and labels ``l<depth>.zarr``, written 64 slices at a time."""
    from emseg.io.prediction_store import StoreLayout, create_prediction_store

    store_path, labels_path = out / f"p{depth}.zarr", out / f"l{depth}.zarr"
    layout = StoreLayout((depth, SIZE, SIZE), (1, SIZE, SIZE), {"probabilities": "uint8", "mask": "uint8"})  # fmt: skip  # noqa: E501
    store = create_prediction_store(store_path, layout, {"threshold": 0.5}, overwrite=True)
    shape = (depth, SIZE, SIZE)
    labels = zarr.create_array(str(labels_path), shape=shape, chunks=(1, SIZE, SIZE), dtype="uint8", overwrite=True)  # fmt: skip  # noqa: E501
    probabilities = zarr.open_array(str(store_path / "probabilities" / "0"), mode="r+")
    mask = zarr.open_array(str(store_path / "mask" / "0"), mode="r+")
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rng = np.random.default_rng(depth)
    for z0 in range(0, depth, 64):
        z1 = min(depth, z0 + 64)
        centre = rng.uniform(64, 192, 2)
        blob = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 40**2)[None]
        truth = np.repeat(blob, z1 - z0, 0)
        probs = np.clip(truth * 0.6 + rng.normal(0.2, 0.2, truth.shape), 0, 1)
        labels[z0:z1] = truth.astype(np.uint8) * 255
        probabilities[z0:z1] = np.rint(probs * 255).astype(np.uint8)
        mask[z0:z1] = (probs > 0.5).astype(np.uint8) * 255
    store.mark_complete()
    return store_path, labels_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--depths", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--record", type=Path, default=Path(__file__).with_name("eval_memory.json"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for depth in args.depths:
        store, labels = write_volume(args.out, depth)
        run_dir = args.out / f"eval{depth}"
        command = [sys.executable, str(ROOT / "eval.py"), f"prediction={store}"]
        command += [f"data.test_mask={labels}", "progress=false", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"eval.py failed for depth {depth}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append(
            {
                "depth": depth,
                "shape": [depth, SIZE, SIZE],
                "megabytes_per_array": depth * SIZE * SIZE / 1e6,
                "seconds": seconds,
                "voxels_per_s": depth * SIZE * SIZE / seconds,
                "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: kilobytes
                "fg_iou": metrics["metrics"]["fg_iou"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    args.record.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
