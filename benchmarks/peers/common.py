"""What every peer's result.json is made of: GNU time records, eval.py scores, the CPU.

Each peer's ``run.sh`` wraps its training and prediction in ``/usr/bin/time -v -o <file>`` and
scores its prediction with ``eval.py prediction=<tif> hydra.run.dir=<score_dir>``; these
functions read those files back. benchmarks/peers/table.py reads the result.json files.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

# fg_iou_ci_low / _high: eval.py's block-bootstrap 95 % interval of fg_iou (emseg.intervals;
# absent from records scored before eval.py kept it).
SCORE_KEYS = ("fg_iou", "mean_iou", "dice", "accuracy", "fg_iou_ci_low", "fg_iou_ci_high")


def gnu_time(path: Path) -> dict[str, float] | None:
    """``{"wall_s", "peak_rss_mb"}`` of a ``/usr/bin/time -v`` record; ``None`` if absent.

    The peak RSS is of the largest single process of the command (GNU time's maximum over the
    process and its waited-for children, not their sum).
    """
    if not path.exists():
        return None
    text = path.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return {
        "wall_s": round(seconds, 1) if wall else None,
        "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
    }


def score(score_dir: Path) -> dict[str, Any] | None:
    """The pixel metrics (and threshold) of an ``eval.py prediction=`` run; ``None`` if absent."""
    done = score_dir / "metrics.json"
    if not done.exists():
        return None
    summary = json.loads(done.read_text())
    metrics = {k: summary["metrics"].get(k) for k in SCORE_KEYS}
    return {**metrics, "threshold": summary.get("threshold"), "slices": summary.get("slices")}


def cpu_model() -> str:
    """``lscpu``'s model name (the timings depend on it), with the core count."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = re.search(r"Model name:\s*(.+)", text)
        flags = re.search(r"Flags:\s*(.+)", text)
        extras = [f for f in ("amx_bf16", "avx512_bf16") if flags and f in flags.group(1).split()]
        model = name.group(1).strip() if name else platform.processor()
        return f"{model} ({', '.join(extras) or 'no bf16'})"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"


def write_result(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write ``<out_dir>/result.json`` (indented, keys in insertion order)."""
    path = out_dir / "result.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
