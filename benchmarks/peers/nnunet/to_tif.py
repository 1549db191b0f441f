"""Turn nnUNetv2_predict's output for the test case into one TIFF that emseg's eval.py scores.

    python to_tif.py NNUNET_OUTPUT_DIR CASE OUT.tif --shape Z Y X

With --save_probabilities nnU-Net writes CASE.npz (softmax, `probabilities`, C x Z x Y x X in
the input's own axes); then OUT.tif is the mitochondria channel as uint8 round(255 p). Without
it, CASE.tif (the argmax label map, 0 / 1) becomes a 0 / 255 mask. Either is uint8 ZYX, the
shape of the test volume (checked).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("pred_dir")
    p.add_argument("case")
    p.add_argument("out")
    p.add_argument("--shape", type=int, nargs=3, required=True)
    args = p.parse_args()
    pred_dir = Path(args.pred_dir)
    npz = pred_dir / f"{args.case}.npz"
    if npz.exists():
        with np.load(npz) as f:
            probs = f["probabilities"]
        if probs.ndim != 4 or probs.shape[0] != 2:
            raise SystemExit(f"{npz}: expected 2 x Z x Y x X probabilities, got {probs.shape}")
        out = np.rint(np.clip(probs[1], 0.0, 1.0) * 255.0).astype(np.uint8)
        kind = "probabilities (uint8 round(255 p))"
    else:
        seg = tifffile.imread(pred_dir / f"{args.case}.tif")
        out = np.where(seg > 0, 255, 0).astype(np.uint8)
        kind = "mask (0 / 255)"
    if list(out.shape) != list(args.shape):
        raise SystemExit(f"prediction shape {out.shape} != test volume shape {args.shape}")
    tifffile.imwrite(args.out, out, compression="zlib")
    info = {"prediction": args.out, "kind": kind, "shape": list(out.shape),
            "foreground_fraction_p>0.5": float((out > 127).mean())}  # fmt: skip
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
