"""Is a difference between blockwise and predict.py stores the blocks' or the thread count's?

After ``kill_and_resume --out OUT`` (which leaves OUT/in.zarr, the tiny checkpoint and the two
uninterrupted stores), predicts the first 20 slices single-process with 1 and with 2 torch
threads and counts the differing uint8 probabilities of slices 0-17 (those whose 2-slice halo
lies inside the 20) against each store::

    nice -n 19 .venv/bin/python -m experiments.large_volumes.threads_check --out /tmp/lv
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import tifffile
import zarr

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    first = zarr.open_array(str(out / "in.zarr"))[:20]
    zarr.create_array(str(out / "in20.zarr"), data=first, chunks=(1, 256, 256), overwrite=True)
    single = {}
    for threads in (1, 2):
        args = [f"ckpt_path={out / 'run/checkpoints/last.ckpt'}", f"input={out / 'in20.zarr'}"]
        args += [f"output={out / f't{threads}.tif'}", "postprocess.median_size=3"]
        args += ["inference.precision=32-true", "progress=false", f"torch_threads={threads}"]
        args += ["overwrite=true", f"hydra.run.dir={out / 't.hydra'}"]
        subprocess.run([sys.executable, str(ROOT / "predict.py"), *args], check=True, cwd=ROOT)
        single[threads] = tifffile.imread(out / f"t{threads}.tif")[:18]
    for name in ("2_workers_x_1_thread", "1_worker_x_2_threads"):
        stored = zarr.open_array(str(out / f"{name}.zarr" / "probabilities" / "0"))[:18]
        counts = {t: int((stored != s).sum()) for t, s in single.items()}
        print(f"{name}: voxels differing from predict.py torch_threads=1 / 2: {counts}")
    print(f"predict.py 1 vs 2 threads: {int((single[1] != single[2]).sum())} voxels differ")


if __name__ == "__main__":
    main()
