"""Write the EPFL / Lucchi++ volumes in the layout of BiaPy's 2D semantic segmentation workflow.

BiaPy's docs (docs/source/workflows/semantic_segmentation.rst, "Data preparation") expect one
folder of 2D images and one of masks per split, sorted alike, e.g.

    <out>/train/x/training-0001.tif      <out>/train/y/training_groundtruth-0001.tif
    <out>/test/x/testing-0001.tif        <out>/test/y/testing_groundtruth-0001.tif

Masks are class indices (0 = background, 1 = mitochondrion, MODEL.N_CLASSES = 2), so the 0/255
Lucchi++ labels are written as 0/1. Images stay uint8 (BiaPy normalises them itself).

--smoke keeps a small crop of each volume (the first SMOKE_Z slices, SMOKE_Y x SMOKE_X pixels at
the top-left corner) so that the pipeline can be checked end to end in a minute or two; the
cropped test labels are also written as one volume (test_mask.tif, 0/255) for eval.py.

Run with the BiaPy venv (it has tifffile): python prepare.py --out <dir> [--smoke]
A `done` stamp makes a rerun a no-op.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[3]
DEFAULTS = {
    "train_image": REPO / "data/epfl/training.tif",
    "train_mask": REPO / "data/lucchipp/training_groundtruth.tif",
    "test_image": REPO / "data/epfl/testing.tif",
    "test_mask": REPO / "data/lucchipp/testing_groundtruth.tif",
}
# Smoke crop: the recipe's 256 x 256 patches must fit, and the 50 % test overlap must still
# stitch more than one patch per slice (256 x 384 -> 2 patches per slice).
SMOKE_Z, SMOKE_Y, SMOKE_X = 8, 256, 384


def _read(path: Path, crop: tuple[int, int, int] | None) -> np.ndarray:
    vol = tifffile.imread(path)
    if vol.ndim != 3:
        raise ValueError(f"{path}: expected a ZYX volume, got shape {vol.shape}")
    if crop is not None:
        z, y, x = crop
        vol = vol[:z, :y, :x]
    return np.ascontiguousarray(vol)


def _write_slices(vol: np.ndarray, folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, sl in enumerate(vol, start=1):
        tifffile.imwrite(folder / f"{prefix}-{i:04d}.tif", sl)


def _mask01(vol: np.ndarray) -> np.ndarray:
    values = np.unique(vol)
    if not set(values.tolist()) <= {0, 1, 255}:
        raise ValueError(f"labels should be 0/255 (or 0/1), found values {values[:10]}")
    return (vol > 0).astype(np.uint8)


def prepare(out: Path, smoke: bool, paths: dict[str, Path]) -> dict:
    out = out.resolve()
    stamp = out / "done"
    if stamp.exists():
        print(f"[biapy prepare] {out} already prepared")
        return json.loads(stamp.read_text())
    crop = (SMOKE_Z, SMOKE_Y, SMOKE_X) if smoke else None
    info: dict = {"smoke": smoke, "crop_zyx": list(crop) if crop else None, "sources": {}}
    for split, stem, gt_stem in (
        ("train", "training", "training_groundtruth"),
        ("test", "testing", "testing_groundtruth"),
    ):
        img = _read(paths[f"{split}_image"], crop)
        msk = _read(paths[f"{split}_mask"], crop)
        if img.shape != msk.shape:
            raise ValueError(f"{split}: image {img.shape} and mask {msk.shape} differ")
        if img.dtype != np.uint8:
            raise ValueError(f"{split}: expected uint8 images, got {img.dtype}")
        _write_slices(img, out / split / "x", stem)
        _write_slices(_mask01(msk), out / split / "y", gt_stem)
        info[split] = {"shape_zyx": list(img.shape), "fg_fraction": float((msk > 0).mean())}
        info["sources"][f"{split}_image"] = str(paths[f"{split}_image"])
        info["sources"][f"{split}_mask"] = str(paths[f"{split}_mask"])
        if split == "test":
            # The labels eval.py scores against: the original volume, or its smoke crop.
            if smoke:
                mask_path = out / "test_mask.tif"
                tifffile.imwrite(mask_path, (msk > 0).astype(np.uint8) * 255)
            else:
                mask_path = paths["test_mask"]
            info["test_mask"] = str(mask_path)
            info["test_image"] = str(paths["test_image"])
    stamp.write_text(json.dumps(info, indent=2))
    print(f"[biapy prepare] wrote {out}: {json.dumps(info)}")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1")
    for key, value in DEFAULTS.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=Path, default=value)
    args = ap.parse_args()
    prepare(args.out, args.smoke, {k: getattr(args, k) for k in DEFAULTS})


if __name__ == "__main__":
    main()
