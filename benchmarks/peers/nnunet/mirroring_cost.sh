#!/usr/bin/env bash
# What nnU-Net's default test-time mirroring costs and changes, on the first N test slices:
#   bash benchmarks/peers/nnunet/mirroring_cost.sh OUT_DIR [N]      (after run.sh OUT_DIR)
# For a run predicted with TTA=0 (--disable_tta, when a session cannot hold 2 h of training and
# a mirrored prediction of the whole volume), this predicts slices 0..N-1 (default 10) with the
# final checkpoint twice, with nnU-Net's default mirroring and with --disable_tta, times both
# (/usr/bin/time -v), scores both with emseg's eval.py against the same slices of the labels,
# and writes OUT_DIR/mirroring/mirroring.json: seconds per slice with and without mirroring and
# the whole-volume mirrored prediction time they imply, fg IoU of both on the N slices.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PY=${NNUNET_PEER_DIR:-$ROOT/.peers/nnunet}/venv/bin/python
EMSEG_PY=$ROOT/.venv/bin/python
OUT=$(cd "${1:?usage: $0 OUT_DIR [N]}" && pwd)
N=${2:-10}
WORK=$OUT/mirroring
export nnUNet_raw=$OUT/nnUNet_raw nnUNet_preprocessed=$OUT/nnUNet_preprocessed
export nnUNet_results=$OUT/nnUNet_results
json() { "$PY" -c "import json,sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }
IMAGES_TS=$(json "$OUT/prepare.json" "d['images_ts']")
TEST_CASE=$(json "$OUT/prepare.json" "d['test_case']")
TEST_MASK=$(json "$OUT/prepare.json" "d['test_mask']")
Y_X=$(json "$OUT/prepare.json" "' '.join(map(str, d['test_shape'][1:]))")

mkdir -p "$WORK/imagesTs"
# the first N slices as an nnU-Net case (image + its spacing file) and the same slices of labels
"$PY" - "$IMAGES_TS" "$TEST_CASE" "$TEST_MASK" "$WORK" "$N" <<'EOF'
import shutil, sys
from pathlib import Path
import tifffile
images, case, mask, work, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
tifffile.imwrite(work / "imagesTs" / "subset_0000.tif", tifffile.imread(images / f"{case}_0000.tif")[:n])
shutil.copyfile(images / f"{case}.json", work / "imagesTs" / "subset.json")
tifffile.imwrite(work / "labels.tif", tifffile.imread(mask)[:n])
EOF

for MODE in mirroring disable_tta; do
    FLAGS=(--save_probabilities)
    [[ $MODE == disable_tta ]] && FLAGS+=(--disable_tta)
    D=$WORK/$MODE
    if [[ ! -f $D/eval/metrics.json ]]; then
        rm -rf "$D" && mkdir -p "$D"
        /usr/bin/time -v -o "$D/time.txt" "$PY" "$HERE/nnunet_cli.py" predict -i "$WORK/imagesTs" \
            -o "$D/nnunet" -d "$(json "$OUT/prepare.json" "d['dataset_id']")" -c 2d -f all \
            -tr nnUNetTrainer_WallClock -chk checkpoint_final.pth -device cpu "${FLAGS[@]}" \
            >"$D/predict.log" 2>&1 || { tail -30 "$D/predict.log"; exit 1; }
        # shellcheck disable=SC2086
        "$PY" "$HERE/to_tif.py" "$D/nnunet" subset "$D/prediction.tif" --shape "$N" $Y_X >>"$D/predict.log"
        (cd "$ROOT" && "$EMSEG_PY" eval.py prediction="$D/prediction.tif" \
            data.test_mask="$WORK/labels.tif" hydra.run.dir="$D/eval" progress=false) \
            >"$D/eval.log" 2>&1 || { tail -30 "$D/eval.log"; exit 1; }
    fi
done

"$EMSEG_PY" - "$OUT" "$N" "$HERE/.." <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from common import gnu_time, score  # benchmarks/peers/common.py
out, n = Path(sys.argv[1]), int(sys.argv[2])
work = out / "mirroring"
slices = json.loads((out / "prepare.json").read_text())["test_shape"][0]
modes = {m: {"predict": gnu_time(work / m / "time.txt"), "score": score(work / m / "eval")}
         for m in ("mirroring", "disable_tta")}
m, d = (modes[k]["predict"]["wall_s"] for k in ("mirroring", "disable_tta"))
full = (json.loads((out / "result.json").read_text()).get("predict") or {}).get("wall_s")
record = {
    "slices": n,
    **modes,
    "seconds_per_slice_added_by_mirroring": round((m - d) / n, 2),
    # the whole volume's --disable_tta prediction plus what mirroring adds per slice
    "whole_volume_mirrored_predict_s_estimate": None if full is None else round(full + (m - d) / n * slices),
    "whole_volume_disable_tta_predict_s": full,
}
(work / "mirroring.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
EOF
