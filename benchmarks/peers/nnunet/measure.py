"""Run a command and record its wall time and peak memory as JSON.

    python measure.py OUT.json -- CMD [ARGS...]

Samples the whole process tree (the command and every descendant: nnU-Net's data-augmentation
workers, its export pool) every MEASURE_INTERVAL_S seconds (default 5) with psutil and keeps
the peaks of
  * peak_rss_mb: the tree's summed RSS (what `ps` shows, added up; counts pages shared between
    forked workers once per process, so it is an upper bound),
  * peak_pss_mb: the tree's summed PSS (shared pages split between the processes sharing them:
    the closest single number to "memory this job takes"),
  * peak_process_rss_mb: the RSS of the largest single process of the tree (what
    `/usr/bin/time -v` reports as "Maximum resident set size", but sampled).
Exits with the command's exit status. Needs psutil (install.sh puts it in the nnU-Net venv).
PSS needs /proc/<pid>/smaps, which is costly to read for a process of several GB: sampled once a
second it took ~12 % of one core from a 2-core nnU-Net training, hence the 5 s default (the
exact peak of the largest process comes from `/usr/bin/time -v` anyway).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

MB = 1024 * 1024
INTERVAL_S = float(os.environ.get("MEASURE_INTERVAL_S", "5"))


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out_json, cmd = argv[0], argv[2:]
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    root = psutil.Process(child.pid)
    peaks = {"peak_rss_mb": 0.0, "peak_pss_mb": 0.0, "peak_process_rss_mb": 0.0, "max_processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = pss = 0
            procs = _tree(root)
            for p in procs:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    try:
                        info = p.memory_info()
                    except psutil.Error:
                        continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                peaks["peak_process_rss_mb"] = max(peaks["peak_process_rss_mb"], info.rss / MB)
            peaks["peak_rss_mb"] = max(peaks["peak_rss_mb"], rss / MB)
            peaks["peak_pss_mb"] = max(peaks["peak_pss_mb"], pss / MB)
            peaks["max_processes"] = max(peaks["max_processes"], len(procs))
            done.wait(INTERVAL_S)

    def forward(signum, _frame) -> None:  # pass SIGTERM / SIGHUP on to the command
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        rc = child.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join(timeout=5)
    record = {
        "command": cmd,
        "returncode": rc,
        "wall_s": round(wall, 3),
        "sample_interval_s": INTERVAL_S,
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in peaks.items()},
    }
    with open(out_json, "w") as f:
        json.dump(record, f, indent=2)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
