"""Collect emseg's peer-benchmark run into ``<out_dir>/result.json`` (benchmarks/peers/common.py).

python benchmarks/peers/emseg/result.py <out_dir> <run_dir> <budget_s> [experiment (fast)]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_model, gnu_time, score, write_result  # noqa: E402


def _train_seconds(checkpoint: Path) -> float | None:
    """The training seconds at which ``checkpoint`` was written (its Timer callback state)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key, value in (state.get("callbacks") or {}).items():
        if "Timer" in str(key):
            return float(value["time_elapsed"]["train"])
    return None


def _sampled_peak(path: Path) -> dict[str, float] | None:
    """A training started outside run.sh (RUN_DIR=): its peak RSS as sampled from
    /proc/<pid>/status (``VmHWM: <kB> kB``, the main process), no wall time."""
    if not path.exists():
        return None
    kilobytes = int(path.read_text().split()[1])
    return {"wall_s": None, "peak_rss_mb": round(kilobytes / 1024, 1), "sampled": "VmHWM"}


def main(out_dir: Path, run_dir: Path, budget_s: float, experiment: str = "fast") -> Path:
    run = json.loads((run_dir / "metrics.json").read_text())
    metrics, environment = run["metrics"], json.loads((run_dir / "environment.json").read_text())
    steps = metrics.get("global_step")
    snapshots = []
    for checkpoint in sorted((run_dir / "checkpoints").glob("snapshot-*.ckpt")):
        name = checkpoint.stem
        snapshots.append(
            {
                "name": name,
                "train_s": _train_seconds(checkpoint),
                "predict": gnu_time(out_dir / f"predict_{name}.time"),
                "score": score(out_dir / f"score_{name}"),
            }
        )
    config = json.loads(json.dumps(run.get("hparams", {})))
    result = {
        "peer": "emseg",
        "versions": {k: environment["packages"].get(k) for k in ("torch", "lightning")},
        "commit": environment.get("git_commit"),
        "recipe": f"experiment={experiment} data=lucchipp model.encoder_weights=null",
        "config": config,
        "evaluation": run.get("evaluation"),
        "budget_s": budget_s,
        "train_s": metrics.get("fit_seconds"),
        "iterations": steps,
        "s_per_iteration": metrics["fit_seconds"] / steps if steps else None,
        "train": gnu_time(out_dir / "train.time") or _sampled_peak(out_dir / "train_vmhwm.txt"),
        "predict": gnu_time(out_dir / "predict_final.time"),
        "score": score(out_dir / "score_final"),
        "snapshots": snapshots,
        "cpu": cpu_model(),
    }
    return write_result(out_dir, result)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5]))
