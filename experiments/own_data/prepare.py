"""Write the copies of the EPFL training volume that the own-data evidence trains on.

    .venv/bin/python experiments/own_data/prepare.py OUT_DIR

OUT_DIR/ receives (nothing is written inside the repository):
* formats: ``train.zarr/{raw,labels}`` (Zarr v3, 1 x 256 x 256 chunks), ``train.h5:{raw,labels}``,
  ``train.n5/{raw,labels}`` (tensorstore), ``slices/raw/`` and ``slices/labels/`` (one PNG per
  slice) -- the same voxels as ``data/epfl/training*.tif``;
* partial labels: ``labels_10pct.tif`` ({0, 1}, 255 = unlabelled): of training slices 0-148 only
  every tenth (0, 10, ..., 140: 15 slices) keeps its labels; the validation hold-out 149-164 is
  kept whole, so every run validates on the same fully labelled slices;
* crops: ``crops.h5:crop{0,1,2}``: three 128 x 256 x 256 label crops of slices 0-148 (their
  offsets in ``crops.json``); the volume is only 165 slices deep, so the crops are 128 (not 256)
  slices deep.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import tensorstore as ts
import tifffile
import zarr
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CROPS = [(10, 64, 96), (16, 420, 300), (4, 200, 700)]  # (z, y, x) offsets of 128 x 256 x 256


def _n5(path: Path, array: np.ndarray) -> None:
    # N5 stores x, y, z: the array is written transposed, as the N5 convention expects.
    store = ts.open(
        {"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}},
        create=True,
        dtype=str(array.dtype),
        shape=array.shape[::-1],
        chunk_layout=ts.ChunkLayout(chunk_shape=[256, 256, 1]),
    ).result()
    store[...] = array.transpose()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image = tifffile.imread(ROOT / "data/epfl/training.tif")
    mask = (tifffile.imread(ROOT / "data/epfl/training_groundtruth.tif") > 0).astype(np.uint8)
    group = zarr.open_group(out / "train.zarr", mode="w")
    for name, array in (("raw", image), ("labels", mask)):
        group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=(1, 256, 256))[:] = (
            array
        )
    with h5py.File(out / "train.h5", "w") as file:
        file.create_dataset("raw", data=image, chunks=(1, 256, 256))
        file.create_dataset("labels", data=mask, chunks=(1, 256, 256))
    _n5(out / "train.n5" / "raw", image)
    _n5(out / "train.n5" / "labels", mask)
    for name, array in (("raw", image), ("labels", mask)):
        folder = out / "slices" / name
        folder.mkdir(parents=True, exist_ok=True)
        for z, plane in enumerate(array):
            Image.fromarray(plane).save(folder / f"slice_{z}.png")
    partial = np.full_like(mask, 255)
    partial[0:149:10] = mask[0:149:10]
    partial[149:] = mask[149:]
    tifffile.imwrite(out / "labels_10pct.tif", partial)
    with h5py.File(out / "crops.h5", "w") as file:
        for number, (z, y, x) in enumerate(CROPS):
            file[f"crop{number}"] = mask[z : z + 128, y : y + 256, x : x + 256]
    labelled = {
        "labels_10pct_training_voxels": int((partial[:149] != 255).sum()),
        "crops_voxels": 3 * 128 * 256 * 256,
        "training_voxels": int(mask[:149].size),
    }
    (out / "crops.json").write_text(json.dumps({"offsets": CROPS, **labelled}, indent=1))
    print(json.dumps(labelled))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
