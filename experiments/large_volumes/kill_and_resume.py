"""Evidence for blockwise prediction (issue 18): equality, kill -9 and resume, throughput.

Run from the repository root (nice'd on a shared machine)::

    nice -n 19 .venv/bin/python -m experiments.large_volumes.kill_and_resume --out /tmp/lv

1. trains a tiny 2.5D checkpoint (model=tiny, data.context=1; two steps on the tests' synthetic
   volume: the VGG16-UNet is too slow for repeated runs on 2 CPU cores) unless --ckpt is given;
2. writes a synthetic (Z, 256, 256) uint8 Zarr volume and predicts it with predict.py into a
   TIFF (the single-process reference), 3x3x3 median on;
3. predicts it blockwise (blocks of 4 slices) with 2 workers x 1 thread and 1 worker x 2
   threads, uninterrupted;
4. kills the scheduler (kill -9) once half of the blocks are written, counts the orphaned
   workers over the next seconds, reruns the same command and counts the blocks it does;
5. kills one worker (kill -9) mid-run and lets the run finish;
6. compares every store with the reference and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["hydra/hydra_logging=disabled"]


def workers_alive() -> list[int]:
    """PIDs of daisy worker processes on this machine (only this experiment starts them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"daisy._subprocess_worker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def blocks_written(output: Path) -> int:
    logs = (output.parent / f"{output.name}.blockwise" / "logs").rglob("worker_*.err")
    return sum(p.read_text(errors="ignore").count("written in") for p in logs)


def predict_command(ckpt: Path, source: Path, output: Path, *extra: str) -> list[str]:
    args = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}"]
    args += ["postprocess.median_size=3", "inference.precision=32-true", "progress=false"]
    args += ["blockwise.block_slices=4", f"hydra.run.dir={output}.hydra", *QUIET, *extra]
    return [sys.executable, str(ROOT / "predict.py"), *args]


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return time.perf_counter() - start, done.stdout + done.stderr


def counts(text: str) -> tuple[int, int]:
    match = re.search(r"(\d+) blocks done now, (\d+) before", text)
    return (int(match[1]), int(match[2])) if match else (-1, -1)


def equal(output: Path, reference: dict[str, np.ndarray]) -> bool:
    return all(
        np.array_equal(zarr.open_array(str(output / name / "0"))[:], expected)
        for name, expected in reference.items()
    )


def tiny_checkpoint(out: Path) -> Path:
    from emseg.train import run as run_train
    from tests.conftest import TINY_OVERRIDES, compose_train, make_volume

    data = out / "data"
    for sub in ("epfl", "lucchipp"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    image, mask = make_volume(seed=0)
    for sub in ("epfl", "lucchipp"):
        for split in ("training", "testing"):
            tifffile.imwrite(data / sub / f"{split}_groundtruth.tif", mask)
    tifffile.imwrite(data / "epfl" / "training.tif", image)
    tifffile.imwrite(data / "epfl" / "testing.tif", image)
    extra = ["logger=none", "test_after_fit=false", "data.context=1"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    run_train(compose_train([*TINY_OVERRIDES, *extra], out / "run", data))
    return out / "run" / "checkpoints" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--depth", type=int, default=96)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt or tiny_checkpoint(out)
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 30, (args.depth, 256, 256)), 0, 255).astype(np.uint8)
    source = out / "in.zarr"
    zarr.create_array(str(source), data=image, chunks=(1, 256, 256), overwrite=True)
    results: dict[str, object] = {"shape": list(image.shape), "block_slices": 4}

    ref_cmd = predict_command(ckpt, source, out / "ref.tif", f"mask_output={out / 'ref_mask.tif'}")
    ref_cmd = [c for c in ref_cmd if not c.startswith("blockwise.")] + ["overwrite=true"]
    results["single_process_s"], _ = run(ref_cmd)
    reference = {
        "probabilities": tifffile.imread(out / "ref.tif"),
        "mask": tifffile.imread(out / "ref_mask.tif"),
    }

    for name, extra in {
        "2_workers_x_1_thread": ["blockwise.workers=2"],
        "1_worker_x_2_threads": ["blockwise.workers=1"],
    }.items():
        output = out / f"{name}.zarr"
        seconds, text = run(predict_command(ckpt, source, output, "overwrite=true", *extra))
        results[name] = {"seconds": seconds, "equal": equal(output, reference), "log": counts(text)}

    # kill -9 of the scheduler half-way, then the same command again
    output = out / "killed_scheduler.zarr"
    cmd = predict_command(ckpt, source, output, "overwrite=true", "blockwise.workers=2")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = -(-args.depth // 4)
    while blocks_written(output) < total // 2 and proc.poll() is None:
        time.sleep(0.2)
    before_kill = blocks_written(output)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    orphans = []
    for _ in range(10):
        orphans.append(len(workers_alive()))
        time.sleep(0.5)
    seconds, text = run([c for c in cmd if c != "overwrite=true"])
    results["kill_scheduler"] = {
        "blocks": total,
        "written_before_kill": before_kill,
        "orphan_workers_every_0.5s": orphans,
        "rerun_done_now_and_before": counts(text),
        "rerun_seconds": seconds,
        "equal": equal(output, reference),
    }

    # kill -9 of one worker mid-run: daisy restarts it and retries its block
    output = out / "killed_worker.zarr"
    cmd = predict_command(ckpt, source, output, "overwrite=true", "blockwise.workers=2")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while blocks_written(output) < total // 3 and proc.poll() is None:
        time.sleep(0.2)
    victims = workers_alive()
    if victims:
        os.kill(victims[0], signal.SIGKILL)
    text = proc.communicate(timeout=3600)[0].decode(errors="ignore")
    results["kill_worker"] = {
        "killed": bool(victims),
        "exit_code": proc.returncode,
        "log": counts(text),
        "equal": equal(output, reference) if proc.returncode == 0 else False,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
