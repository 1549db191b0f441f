"""Gather one nnU-Net peer run into OUT/result.json (benchmarks/peers/table.py plots it).

    python result.py OUT

The fields every peer shares are those of benchmarks/peers/common.py (read by
benchmarks/peers/table.py): peer, budget_s, train_s, iterations, s_per_iteration, train /
predict ({wall_s, peak_rss_mb} of `/usr/bin/time -v`: the largest single process), score (the
eval.py metrics), snapshots ([{name, train_s, predict, score}]), cpu. nnU-Net's own extras:
versions, plan (what the 2d plan chose), the trainer's clock record, and the process-tree
memory of measure.py (all of nnU-Net's worker processes added up).

Reads what run.sh left in OUT: pip_freeze.txt, plan_summary.json, prepare.json, wallclock.json,
train.time / train_resources.json, predict/<tag>/{time.txt, resources.json, prediction.json}
and eval/<tag>/metrics.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_model, gnu_time, score, write_result  # noqa: E402

VERSION_PACKAGES = (
    "nnunetv2", "torch", "dynamic-network-architectures", "batchgeneratorsv2", "batchgenerators",
    "acvl-utils", "numpy", "SimpleITK", "tifffile", "blosc2",
)  # fmt: skip
TREE_KEYS = ("wall_s", "peak_rss_mb", "peak_pss_mb", "peak_process_rss_mb", "max_processes")


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _versions(freeze: Path) -> dict:
    found = {}
    if freeze.exists():
        for line in freeze.read_text().splitlines():
            if "==" in line:
                name, version = line.split("==", 1)
                found[name.lower().replace("_", "-")] = version
    return {p: found.get(p.lower().replace("_", "-")) for p in VERSION_PACKAGES}


def _tree(path: Path) -> dict | None:
    record = _load(path)
    return {k: record.get(k) for k in TREE_KEYS} if record else None


def _predict_flags(out: Path, tag: str) -> list[str] | None:
    """The extra nnUNetv2_predict flags run.sh used for ``tag`` (``None``: not recorded)."""
    path = out / "predict" / tag / "predict_flags.txt"
    return path.read_text().split() if path.exists() else None


def _checkpoint(out: Path, tag: str, train_s, iterations) -> dict:
    conv = _load(out / "predict" / tag / "prediction.json") or {}
    flags = _predict_flags(out, tag)
    return {
        "name": tag,
        "train_s": train_s,
        "iterations": iterations,
        "predict_flags": flags,
        "mirroring": None if flags is None else "--disable_tta" not in flags,
        "predict": gnu_time(out / "predict" / tag / "time.txt"),
        "predict_tree": _tree(out / "predict" / tag / "resources.json"),
        "prediction": conv.get("prediction"),
        "prediction_kind": conv.get("kind"),
        "score": score(out / "eval" / tag),
    }


def main(out: Path) -> Path:
    clock = _load(out / "wallclock.json") or {}
    prep = _load(out / "prepare.json") or {}
    final = _checkpoint(out, "final", clock.get("train_seconds"), clock.get("iterations"))
    snapshots = [
        {
            **_checkpoint(
                out,
                s["checkpoint"][len("checkpoint_") : -len(".pth")],
                s["train_seconds"],
                s["iterations"],
            ),
            "snapshot_s": s["snapshot_s"],
        }  # fmt: skip
        for s in clock.get("snapshots", [])
    ]
    result = {
        "peer": "nnunet",
        "peer_label": "nnU-Net v2 (2d)",
        "versions": _versions(out / "pip_freeze.txt"),
        "recipe": "nnUNetv2 default plans (ExperimentPlanner), configuration 2d, fold all, "
        "nnUNetTrainer stopped by wall clock (nnUNetTrainer_WallClock), -device cpu; "
        "nnUNetv2_predict defaults (sliding window step 0.5, Gaussian, mirroring) + "
        "--save_probabilities; TTA=0 adds --disable_tta (final.predict_flags says "
        "which)",
        "fold": "all: trained on the whole training volume (nnU-Net's per-epoch validation "
        "batches are drawn from it too; its post-training validation is skipped)",
        "dataset": prep.get("dataset"),
        "smoke_crop": prep.get("smoke_crop"),
        "test_mask": prep.get("test_mask"),
        "plan": _load(out / "plan_summary.json"),
        "preprocess": _tree(out / "preprocess_resources.json"),
        "budget_s": clock.get("budget_s"),
        "train_s": clock.get("train_seconds"),
        "iterations": clock.get("iterations"),
        "s_per_iteration": clock.get("seconds_per_iteration"),
        "epochs_completed": clock.get("epochs_completed"),
        "nominal_schedule": f"{clock.get('num_epochs_nominal')} epochs x "
        f"{clock.get('num_iterations_per_epoch')} training + "
        f"{clock.get('num_val_iterations_per_epoch')} validation iterations",
        "stop_reason": clock.get("stop_reason"),
        "train": gnu_time(out / "train.time"),
        "train_tree": _tree(out / "train_resources.json"),
        "clock": clock,
        "predict": final["predict"],
        "predict_tree": final["predict_tree"],
        "score": final["score"],
        "final": final,
        "snapshots": snapshots,
        "cpu": cpu_model(),
        "notes": "train / predict peak_rss_mb: /usr/bin/time -v, the largest single process. "
        "*_tree (benchmarks/peers/nnunet/measure.py, sampled at 1 Hz): peak_rss_mb the summed "
        "RSS of the whole process tree (nnU-Net's augmentation / export workers; shared pages "
        "counted per process), peak_pss_mb the same with shared pages split, "
        "peak_process_rss_mb the largest single process. train_s: from the start of the "
        "trainer's run_training (its data loaders included) to the budget stop; "
        "predict wall_s: the whole nnUNetv2_predict run (preprocessing, sliding window with "
        "mirroring, export of the probabilities).",
    }
    path = write_result(out, result)
    summary = {k: result[k] for k in ("train_s", "iterations", "s_per_iteration")}
    summary["predict_s"] = (result["predict"] or {}).get("wall_s")
    summary["score"] = result["score"]
    print(json.dumps(summary))
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
