"""The peer benchmark's table and plot from each peer's result.json (issue 19).

    python benchmarks/peers/table.py <results_root> --out experiments/peers

Each peer's run is done in a different session (one 2 h run fits in a session, and nothing
under outputs/ outlives it), so the table is built from committed records:
``<results_root>/<run>/result.json`` (written by ``benchmarks/peers/<peer>/run.sh``, fields in
benchmarks/peers/common.py; ``<run>`` is ``<peer>`` or ``<peer>-<variant>``), where present, is
first copied to ``<out>/runs/<run>.json``; then every ``<out>/runs/<run>.json`` makes one row.
Writes ``table.md`` (per run: test fg IoU, mean IoU, Dice, training time, iterations and seconds
per iteration, test-time augmentation, prediction time, peak RSS of training and prediction,
CPU), ``results.json`` (the rows) and ``fg_iou_vs_time.png`` (test fg IoU against training wall
time: snapshots and final model).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PEERS = ("emseg", "nnunet", "biapy")


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def test_time_augmentation(result: dict[str, Any]) -> str | None:
    """What the scored prediction averaged over: emseg's chosen flips, nnU-Net's mirroring,
    BiaPy's 8 rotations / flips (each tool records it its own way)."""
    summary = (result.get("config") or {}).get("summary") or {}
    if "test_tta" in summary:  # BiaPy: its test config's TEST.AUGMENTATION
        return "8-way" if summary["test_tta"] else "none"
    evaluation = result.get("evaluation") or {}
    if "inference" in evaluation:  # emseg: chosen on validation
        return f"{evaluation['inference'].get('tta') or 'none'} (chosen on val)"
    final = result.get("final") or {}
    if "mirroring" in final:  # nnU-Net; None: run before run.sh recorded its flags (mirrored)
        return "none (--disable_tta)" if final["mirroring"] is False else "mirroring (4)"
    return None


def row(result: dict[str, Any]) -> dict[str, Any]:
    """One table row of a peer's result.json (the fields of benchmarks/peers/common.py)."""
    score = result.get("score") or {}
    train, predict = result.get("train") or {}, result.get("predict") or {}
    return {
        "peer": result["peer"],
        "fg_iou": score.get("fg_iou"),
        "fg_iou_ci": _interval(score),
        "mean_iou": score.get("mean_iou"),
        "dice": score.get("dice"),
        "train_s": result.get("train_s"),
        "iterations": result.get("iterations"),
        "s_per_iteration": result.get("s_per_iteration"),
        "tta": test_time_augmentation(result),
        "predict_s": predict.get("wall_s"),
        "train_peak_rss_mb": train.get("peak_rss_mb"),
        "predict_peak_rss_mb": predict.get("peak_rss_mb"),
        "cpu": result.get("cpu"),
        "curve": curve(result),
    }


def _interval(score: dict[str, Any]) -> tuple[float, float] | None:
    """eval.py's 95 % interval of fg IoU (``None`` for records scored before it was kept)."""
    low, high = score.get("fg_iou_ci_low"), score.get("fg_iou_ci_high")
    return None if low is None or high is None else (low, high)


def _fg_iou_cell(r: dict[str, Any]) -> str:
    interval = r.get("fg_iou_ci")
    if r["fg_iou"] is None or interval is None:
        return _fmt(r["fg_iou"])
    return f"{_fmt(r['fg_iou'])} ({interval[0]:.3f}-{interval[1]:.3f})"


def curve(result: dict[str, Any]) -> list[tuple[float, float]]:
    """``(training seconds, test fg IoU)`` of the snapshots and the final model, in time order."""
    points = [
        (s["train_s"], s["score"]["fg_iou"])
        for s in result.get("snapshots") or []
        if s.get("train_s") is not None and (s.get("score") or {}).get("fg_iou") is not None
    ]
    final = (result.get("score") or {}).get("fg_iou")
    if final is not None and result.get("train_s") is not None:
        points.append((result["train_s"], final))
    return sorted(set(points))


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| peer | test fg IoU (95 % interval) | mean IoU | Dice | train (min) | iterations | "
        "s / iteration | test-time aug. | predict (min) | peak RSS train / predict (GB) | CPU |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        rss = "/".join(
            "–" if r[k] is None else f"{r[k] / 1024:.1f}"
            for k in ("train_peak_rss_mb", "predict_peak_rss_mb")
        )
        lines.append(
            f"| {r['peer']} | {_fg_iou_cell(r)} | {_fmt(r['mean_iou'])} | {_fmt(r['dice'])} | "
            f"{_minutes(r['train_s'])} | {_fmt(r['iterations'], '.0f')} | "
            f"{_fmt(r['s_per_iteration'], '.2f')} | {r['tta'] or '–'} | "
            f"{_minutes(r['predict_s'])} | {rss} | "
            f"{r['cpu']} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for r in rows:
        if r["curve"]:
            minutes = [t / 60 for t, _ in r["curve"]]
            axes.plot(minutes, [v for _, v in r["curve"]], marker="o", label=r["peer"])
    axes.set_xlabel("training wall time (min)")
    axes.set_ylabel("test fg IoU (Lucchi++ labels)")
    axes.set_title("Lucchi++ test volume, 2-core CPUs (CPU column of table.md)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_names(names: Iterable[str]) -> list[str]:
    """The peer runs among ``names``, grouped by peer in PEERS order.

    A run is named after its peer, or ``<peer>-<variant>`` for another recipe, budget or CPU of
    the same tool (``emseg-fast_budget-epyc``), so that each variant keeps its own row instead
    of replacing the peer's earlier one; any other name is not a run.
    """
    names = set(names)
    ordered = []
    for peer in PEERS:
        ordered += [peer] if peer in names else []
        ordered += sorted(n for n in names if n.startswith(f"{peer}-"))
    return ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_root", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/peers"))
    args = parser.parse_args()
    records = args.out / "runs"
    records.mkdir(parents=True, exist_ok=True)
    for name in run_names(p.parent.name for p in args.results_root.glob("*/result.json")):
        shutil.copyfile(args.results_root / name / "result.json", records / f"{name}.json")
    rows = [
        {**row(json.loads((records / f"{name}.json").read_text())), "peer": name}
        for name in run_names(p.stem for p in records.glob("*.json"))
    ]
    (args.out / "table.md").write_text(markdown(rows))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "fg_iou_vs_time.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
