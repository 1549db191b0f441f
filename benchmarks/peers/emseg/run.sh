#!/bin/bash
# emseg's row of the peer benchmark (issue 19), under the same protocol as the peers:
# train experiment=fast on Lucchi++ for at most BUDGET_S seconds, predict the test volume with
# its own inference (the settings train.py chose on its validation hold-out, stored in the best
# checkpoint) into a TIFF, score that TIFF with eval.py prediction= against the Lucchi++ test
# labels; the same for each snapshot checkpoint (the fg-IoU-vs-training-time curve), with the
# best checkpoint's chosen settings. Every step is skipped when its output exists (resumable).
#   bash benchmarks/peers/emseg/run.sh <out_dir>      [BUDGET_S=7200] [RUN_DIR=<out_dir>/run]
#   SMOKE=1 bash benchmarks/peers/emseg/run.sh <out_dir>   # experiment=quick, tiny
#   EXPERIMENT=fast_budget ...   # another recipe (fast_budget: fast annealed to the budget)
#   PREDICT_SNAPSHOTS=0 ...      # predict + score the final model only (each snapshot's
#                                # prediction of the test volume costs as much as the final's;
#                                # run.sh again without it adds them, the rest is skipped)
#   PREDICT_SNAPSHOTS="epoch015 epoch031" ...   # only these snapshots (names' endings)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:?usage: run.sh <out_dir>}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=.venv/bin/python
BUDGET_S=${BUDGET_S:-7200}
RUN=${RUN_DIR:-$OUT/run}
LABELS=data/lucchipp/testing_groundtruth.tif
TEST=data/epfl/testing.tif
TIME="/usr/bin/time -v -o"
EXPERIMENT=${EXPERIMENT:-fast}
EXTRA=()
if [[ ${SMOKE:-0} == 1 ]]; then
  EXPERIMENT=quick
  EXTRA=(data.val_slices=4)
fi
hms=$(printf '00:%02d:%02d:%02d' $((BUDGET_S / 3600)) $((BUDGET_S % 3600 / 60)) $((BUDGET_S % 60)))

if [[ ! -f $RUN/metrics.json ]]; then
  $TIME "$OUT/train.time" $PY train.py experiment=$EXPERIMENT data=lucchipp \
    model.encoder_weights=null resume=true test_after_fit=false choose_settings=true \
    trainer.max_time="$hms" hydra.run.dir="$RUN" "${EXTRA[@]}"
fi

# The best checkpoint's chosen settings as overrides, for the snapshots (which store none).
mapfile -t CHOSEN < <($PY benchmarks/peers/emseg/chosen_overrides.py "$RUN")
THRESHOLD=$(printf '%s\n' "${CHOSEN[@]}" | sed -n 's/^threshold=//p')

predict_and_score() {  # name ckpt [overrides...]
  local name=$1 ckpt=$2
  shift 2
  if [[ ! -f $OUT/pred_$name.tif ]]; then
    $TIME "$OUT/predict_$name.time" $PY predict.py ckpt_path="$ckpt" input=$TEST \
      output="$OUT/pred_$name.partial.tif" overwrite=true progress=false "$@"
    mv "$OUT/pred_$name.partial.tif" "$OUT/pred_$name.tif"
  fi
  if [[ ! -f $OUT/score_$name/metrics.json ]]; then
    $PY eval.py prediction="$OUT/pred_$name.tif" data.test_mask=$LABELS \
      ${THRESHOLD:+threshold=$THRESHOLD} hydra.run.dir="$OUT/score_$name"
  fi
}

predict_and_score final "$RUN"
SNAPSHOTS=()
case ${PREDICT_SNAPSHOTS:-1} in
  0) ;;
  1) SNAPSHOTS=("$RUN"/checkpoints/snapshot-*.ckpt) ;;
  *)
    for name in $PREDICT_SNAPSHOTS; do
      snapshot=$RUN/checkpoints/snapshot-$name.ckpt
      [[ -f $snapshot ]] || { echo "run.sh: PREDICT_SNAPSHOTS names $snapshot, which does not exist" >&2; exit 2; }
      SNAPSHOTS+=("$snapshot")
    done
    ;;
esac
for snapshot in "${SNAPSHOTS[@]}"; do
  [[ -f $snapshot ]] || continue
  predict_and_score "$(basename "$snapshot" .ckpt)" "$snapshot" "${CHOSEN[@]}"
done
$PY benchmarks/peers/emseg/result.py "$OUT" "$RUN" "$BUDGET_S" "$EXPERIMENT"
