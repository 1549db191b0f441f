"""Convert the EPFL / Lucchi++ volumes into an nnU-Net v2 raw dataset, plan and preprocess it.

    <nnunet venv>/bin/python prepare.py --work WORK --out OUT [--dataset-id 501] [--smoke]

Writes, under WORK (git-ignored, e.g. .peers/nnunet/run):
  nnUNet_raw/Dataset501_LucchiPP/
    imagesTr/lucchipp_000_0000.tif  the training volume (uint8 ZYX, 165 x 768 x 1024)
    imagesTr/lucchipp_000.json      {"spacing": [5.0, 5.0, 5.0]}  (nm, Z Y X; Tiff3DIO's aux file)
    labelsTr/lucchipp_000.tif       the Lucchi++ training labels as 0 / 1 (+ its .json)
    imagesTs/lucchipp_test_0000.tif the test volume (+ lucchipp_test.json)
    dataset.json                    one channel "EM" (nnU-Net's default z-score normalisation),
                                    labels background 0 / mitochondria 1, file_ending .tif
  nnUNet_preprocessed/Dataset501_LucchiPP/  by `nnUNetv2_plan_and_preprocess -d 501 -c 2d
                                    --verify_dataset_integrity` (default planner, default plans)
and under OUT: prepare.json (paths, shapes, the labels eval.py scores against, preprocessing
time and memory) and plan_summary.json / plan_summary.md (what nnU-Net's 2d plan chose).

One 3D training case: nnU-Net's 2d configuration trains on its slices. --smoke takes a small
crop (8 x 128 x 128, with mitochondria in it) of both volumes as Dataset502_LucchiPPSmoke, and
writes the matching crop of the test labels for scoring. Each step is skipped when its output
exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SPACING_NM = [5.0, 5.0, 5.0]  # EPFL / Lucchi++: 5 nm isotropic voxels (Z, Y, X)
# Smoke crop: slices 0-7, rows 256-383, columns 384-511 (18 % / 17 % mitochondria in the
# training / test labels there).
SMOKE_CROP = (slice(0, 8), slice(256, 384), slice(384, 512))
CASE = "lucchipp_000"
TEST_CASE = "lucchipp_test"


def _read(path: Path, crop) -> np.ndarray:
    vol = tifffile.imread(path)
    if vol.ndim != 3:
        raise SystemExit(f"{path}: expected a 3D ZYX volume, got shape {vol.shape}")
    return np.ascontiguousarray(vol[crop]) if crop is not None else vol


def _write_case(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{name}.tif", array, compression="zlib")
    # Tiff3DIO reads the spacing from <case>.json (image: the name without _0000).
    aux = name[:-5] if name.endswith("_0000") else name
    (folder / f"{aux}.json").write_text(json.dumps({"spacing": SPACING_NM}))


def convert(args, raw_dir: Path, eval_dir: Path) -> dict:
    crop = SMOKE_CROP if args.smoke else None
    ds = raw_dir / args.dataset_name
    test_mask = Path(args.test_mask)
    if crop is not None:
        test_mask = eval_dir / "testing_groundtruth_crop.tif"
    done = ds / "dataset.json"
    if done.exists() and test_mask.exists():
        print(f"[nnunet/prepare] {ds} exists, conversion skipped")
    else:
        print(f"[nnunet/prepare] writing {ds}")
        if ds.exists():
            shutil.rmtree(ds)
        image = _read(Path(args.train_image), crop)
        labels = _read(Path(args.train_mask), crop)
        if image.shape != labels.shape:
            raise SystemExit(f"training image {image.shape} and labels {labels.shape} differ")
        _write_case(ds / "imagesTr", f"{CASE}_0000", image)
        _write_case(ds / "labelsTr", CASE, (labels > 0).astype(np.uint8))
        test = _read(Path(args.test_image), crop)
        _write_case(ds / "imagesTs", f"{TEST_CASE}_0000", test)
        if crop is not None:
            eval_dir.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(test_mask, _read(Path(args.test_mask), crop), compression="zlib")
        dataset_json = {
            "channel_names": {"0": "EM"},  # not "CT": nnU-Net's default z-score normalisation
            "labels": {"background": 0, "mitochondria": 1},
            "numTraining": 1,
            "file_ending": ".tif",
            "overwrite_image_reader_writer": "Tiff3DIO",
            "name": args.dataset_name,
            "description": "EPFL hippocampus EM volume, Lucchi++ mitochondria labels, "
            "5 nm isotropic" + (" (smoke crop 8 x 128 x 128)" if crop is not None else ""),
        }
        done.write_text(json.dumps(dataset_json, indent=2))
    test_shape = list(tifffile.TiffFile(ds / "imagesTs" / f"{TEST_CASE}_0000.tif").series[0].shape)
    return {
        "dataset": args.dataset_name,
        "dataset_id": args.dataset_id,
        "raw_dataset": str(ds),
        "images_ts": str(ds / "imagesTs"),
        "test_case": TEST_CASE,
        "test_shape": test_shape,
        "test_mask": str(test_mask),
        "smoke_crop": [[s.start, s.stop] for s in crop] if crop is not None else None,
        "spacing": SPACING_NM,
    }


def plan_and_preprocess(args, pre_dir: Path, out: Path) -> dict:
    plans = pre_dir / args.dataset_name / "nnUNetPlans.json"
    record = out / "preprocess_resources.json"
    if (
        plans.exists()
        and (pre_dir / args.dataset_name / "nnUNetPlans_2d").is_dir()
        and record.exists()
    ):
        print(f"[nnunet/prepare] {plans} exists, planning skipped")
    else:
        cmd = [
            sys.executable, str(HERE / "measure.py"), str(record), "--",
            sys.executable, str(HERE / "nnunet_cli.py"), "plan_and_preprocess",
            "-d", str(args.dataset_id), "-c", "2d", "--verify_dataset_integrity",
        ]  # fmt: skip
        print("[nnunet/prepare]", " ".join(cmd[4:]))
        subprocess.run(cmd, check=True)
    return json.loads(record.read_text())


def summarize_plan(pre_dir: Path, name: str) -> dict:
    plans = json.loads((pre_dir / name / "nnUNetPlans.json").read_text())
    c2d = plans["configurations"]["2d"]
    arch = c2d["architecture"]
    kw = arch["arch_kwargs"]
    summary = {
        "plans_name": plans["plans_name"],
        "experiment_planner": plans.get("experiment_planner_used"),
        "configuration": "2d",
        "patch_size": c2d["patch_size"],
        "batch_size": c2d["batch_size"],
        "spacing": c2d["spacing"],
        "median_image_size_in_voxels": c2d["median_image_size_in_voxels"],
        "normalization_schemes": c2d["normalization_schemes"],
        "batch_dice": c2d.get("batch_dice"),
        "network_class_name": arch["network_class_name"],
        "n_stages": kw.get("n_stages"),
        "features_per_stage": kw.get("features_per_stage"),
        "kernel_sizes": kw.get("kernel_sizes"),
        "strides": kw.get("strides"),
        "n_conv_per_stage": kw.get("n_conv_per_stage"),
        "n_conv_per_stage_decoder": kw.get("n_conv_per_stage_decoder"),
        "conv_op": kw.get("conv_op"),
        "norm_op": kw.get("norm_op"),
        "nonlin": kw.get("nonlin"),
    }
    try:  # count the parameters of the network the plan describes (deep supervision heads too)
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        net = get_network_from_plans(
            arch["network_class_name"], kw, arch["_kw_requires_import"], 1, 2,
            allow_init=True, deep_supervision=True,
        )  # fmt: skip
        summary["n_parameters"] = int(sum(p.numel() for p in net.parameters()))
    except Exception as e:  # noqa: BLE001 - a summary field, never worth failing for
        summary["n_parameters"] = None
        summary["n_parameters_error"] = repr(e)
    return summary


def plan_markdown(s: dict) -> str:
    rows = [
        ("planner / plans", f"{s['experiment_planner']} / {s['plans_name']}"),
        ("patch size (Y, X)", " x ".join(map(str, s["patch_size"]))),
        ("batch size", s["batch_size"]),
        ("median slice size", " x ".join(map(str, s["median_image_size_in_voxels"]))),
        ("spacing (nm)", s["spacing"]),
        ("normalisation", ", ".join(s["normalization_schemes"])),
        ("network", s["network_class_name"].rsplit(".", 1)[-1]),
        ("stages", s["n_stages"]),
        ("features per stage", s["features_per_stage"]),
        ("strides", s["strides"]),
        (
            "convs per stage (enc / dec)",
            f"{s['n_conv_per_stage']} / {s['n_conv_per_stage_decoder']}",
        ),
        ("parameters", f"{s['n_parameters']:,}" if s.get("n_parameters") else "?"),
    ]
    lines = ["# nnU-Net v2 plan, configuration 2d", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", required=True, help="holds nnUNet_raw / nnUNet_preprocessed")
    p.add_argument("--out", required=True, help="run directory for the records")
    p.add_argument("--dataset-id", type=int, default=None, help="501 (502 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="8 x 128 x 128 crops")
    p.add_argument("--train-image", default=str(ROOT / "data/epfl/training.tif"))
    p.add_argument("--train-mask", default=str(ROOT / "data/lucchipp/training_groundtruth.tif"))
    p.add_argument("--test-image", default=str(ROOT / "data/epfl/testing.tif"))
    p.add_argument("--test-mask", default=str(ROOT / "data/lucchipp/testing_groundtruth.tif"))
    args = p.parse_args()
    if args.dataset_id is None:
        args.dataset_id = 502 if args.smoke else 501
    args.dataset_name = f"Dataset{args.dataset_id:03d}_" + (
        "LucchiPPSmoke" if args.smoke else "LucchiPP"
    )

    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    raw_dir, pre_dir = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    out.mkdir(parents=True, exist_ok=True)
    # nnU-Net reads its folders from the environment (nnunetv2/paths.py) at import time.
    os.environ["nnUNet_raw"] = str(raw_dir)
    os.environ["nnUNet_preprocessed"] = str(pre_dir)
    os.environ.setdefault("nnUNet_results", str(work / "nnUNet_results"))

    t = time.perf_counter()
    info = convert(args, raw_dir, work / "eval_labels")
    info["convert_seconds"] = round(time.perf_counter() - t, 2)
    info["preprocess"] = plan_and_preprocess(args, pre_dir, out)
    summary = summarize_plan(pre_dir, args.dataset_name)
    (out / "plan_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "plan_summary.md").write_text(plan_markdown(summary))
    info["plans"] = str(pre_dir / args.dataset_name / "nnUNetPlans.json")
    (out / "prepare.json").write_text(json.dumps(info, indent=2))
    print(plan_markdown(summary))


if __name__ == "__main__":
    main()
