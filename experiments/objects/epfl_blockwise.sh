#!/usr/bin/env bash
# Blockwise against in-memory objects on the whole EPFL test volume (experiments/objects/README.md,
# "Blockwise"): the same probabilities labelled both ways with the chosen settings (connected
# components, min_size 5000), tables and labels compared. Run from the repository root.
#   bash experiments/objects/epfl_blockwise.sh <probabilities.tif> <work_dir>
set -euo pipefail
PROBS=${1:?probabilities}
W=${2:?work dir}
mkdir -p "$W"
T="/usr/bin/time -v -o"
COMMON=(input="$PROBS" voxel_size=[5,5,5] objects.min_size=5000 overwrite=true)
$T "$W/memory.time" .venv/bin/python measure.py "${COMMON[@]}" table="$W/memory/objects.csv" \
  labels_output="$W/memory/labels.tif" hydra.run.dir="$W/memory"
# 72 blocks of 32 x 256 x 256 (6 x 3 x 4): most objects cross a block face.
$T "$W/blockwise.time" .venv/bin/python measure.py "${COMMON[@]}" \
  table="$W/blockwise/objects.csv" labels_output="$W/blockwise/labels.zarr/instances" \
  blockwise.workers=2 blockwise.block_shape=[32,256,256] blockwise.progress=false \
  hydra.run.dir="$W/blockwise"
cmp "$W/memory/objects.csv" "$W/blockwise/objects.csv" && echo "tables identical"
.venv/bin/python - "$W" <<'PY'
import sys, numpy as np, tifffile, zarr
w = sys.argv[1]
memory = tifffile.imread(f"{w}/memory/labels.tif")
node = zarr.open(f"{w}/blockwise/labels.zarr/instances", mode="r")  # OME-Zarr: level "0"
blockwise = (node["0"] if isinstance(node, zarr.Group) else node)[:]
print("labels identical:", memory.shape == blockwise.shape and bool(np.array_equal(memory, blockwise)),
      "objects:", int(memory.max()))
PY
grep -h -E "Elapsed|Maximum resident" "$W/memory.time" "$W/blockwise.time"
