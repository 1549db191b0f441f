#!/usr/bin/env bash
# nnU-Net v2 peer, end to end:  bash benchmarks/peers/nnunet/run.sh [OUT_DIR]
#   install -> prepare (convert + plan_and_preprocess -c 2d) -> train (wall clock) ->
#   predict (final checkpoint and each snapshot) -> score with emseg's eval.py -> result.json
# Timing / memory: training and each prediction run under `/usr/bin/time -v` (wall time, peak RSS
# of the largest process, as every peer: benchmarks/peers/common.py) inside measure.py (summed
# RSS / PSS of the whole process tree, nnU-Net's worker processes included).
# Resumable: each step is skipped when its output exists (a training run that did not finish
# starts again from scratch: its wall clock would not survive a restart anyway).
# Environment:
#   BUDGET_S       training wall-clock budget in seconds (default 7200; SMOKE: 60)
#   SNAPSHOTS_S    comma-separated training seconds for snapshot checkpoints
#                  (default 1800,3600,5400; SMOKE: 20,40); the budget itself = checkpoint_final
#   SMOKE=1        8 x 128 x 128 crops as Dataset502 (default OUT_DIR .peers/nnunet/smoke)
#   TORCH_THREADS  cap torch's threads in training / prediction / eval (default: nnU-Net's own
#                  choice, all cores; SMOKE: 1)
#   PREDICT_SNAPSHOTS  1 (default): predict + score each snapshot too; 0: the final checkpoint only
#   PROBABILITIES  1 (default): nnUNetv2_predict --save_probabilities, scored as uint8
#                  round(255 p); 0: its default label map, scored as a 0 / 255 mask
#   TTA            1 (default): nnU-Net's default test-time mirroring; 0: nnUNetv2_predict
#                  --disable_tta (4 x fewer forward passes; predict_flags.txt records which),
#                  for a session that cannot hold 2 h of training and a mirrored prediction
#   nnUNet_n_proc_DA  nnU-Net's own knob for its augmentation workers (default min(12, cores))
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER_DIR=${NNUNET_PEER_DIR:-$ROOT/.peers/nnunet}
PY=$PEER_DIR/venv/bin/python
EMSEG_PY=$ROOT/.venv/bin/python

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    OUT=${1:-$PEER_DIR/smoke}
    BUDGET_S=${BUDGET_S:-60}
    SNAPSHOTS_S=${SNAPSHOTS_S:-20,40}
    export TORCH_THREADS=${TORCH_THREADS:-1}
    DATASET_ID=502
    SMOKE_FLAG=--smoke
else
    OUT=${1:-$PEER_DIR/run}
    BUDGET_S=${BUDGET_S:-7200}
    SNAPSHOTS_S=${SNAPSHOTS_S:-1800,3600,5400}
    DATASET_ID=501
    SMOKE_FLAG=
fi
PROBABILITIES=${PROBABILITIES:-1}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
export BUDGET_S SNAPSHOTS_S
# nnU-Net's three folders, all inside the run directory.
export nnUNet_raw=$OUT/nnUNet_raw nnUNet_preprocessed=$OUT/nnUNet_preprocessed
export nnUNet_results=$OUT/nnUNet_results
log() { echo "[nnunet $(date +%H:%M:%S)] $*"; }

# 1. install (own venv; stamp file makes it a no-op when done)
bash "$HERE/install.sh" "$OUT"

# 2. convert + plan + preprocess (prepare.py skips what exists)
if [[ ! -f $OUT/prepare.json ]]; then
    log "prepare (log: $OUT/logs/prepare.log)"
    "$PY" "$HERE/prepare.py" --work "$OUT" --out "$OUT" --dataset-id "$DATASET_ID" $SMOKE_FLAG \
        >"$OUT/logs/prepare.log" 2>&1 || { tail -30 "$OUT/logs/prepare.log"; exit 1; }
fi
json() { "$PY" -c "import json,sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }
DATASET=$(json "$OUT/prepare.json" "d['dataset']")
IMAGES_TS=$(json "$OUT/prepare.json" "d['images_ts']")
TEST_CASE=$(json "$OUT/prepare.json" "d['test_case']")
TEST_SHAPE=$(json "$OUT/prepare.json" "d['test_shape']" | tr -d '[],')
TEST_MASK=$(json "$OUT/prepare.json" "d['test_mask']")
log "dataset $DATASET, 2d plan: $(json "$OUT/plan_summary.json" "'patch', d['patch_size'], 'batch', d['batch_size']" 2>/dev/null || true)"

# 3. train, stopped by wall clock (fold all = the whole training volume, CPU)
TRAINER=nnUNetTrainer_WallClock
FOLD_DIR=$nnUNet_results/$DATASET/${TRAINER}__nnUNetPlans__2d/fold_all
if [[ -f $FOLD_DIR/checkpoint_final.pth && -f $OUT/train_resources.json && -f $FOLD_DIR/wallclock.json ]]; then
    log "training done before, skipped"
else
    rm -rf "$FOLD_DIR" "$OUT/predict" "$OUT/eval"
    log "train: budget ${BUDGET_S}s, snapshots ${SNAPSHOTS_S}s (log: $OUT/logs/train.log)"
    "$PY" "$HERE/measure.py" "$OUT/train_resources.json.part" -- /usr/bin/time -v -o "$OUT/train.time" \
        "$PY" "$HERE/nnunet_cli.py" train "$DATASET_ID" 2d all -tr "$TRAINER" -device cpu \
        >"$OUT/logs/train.log" 2>&1 || { tail -40 "$OUT/logs/train.log"; exit 1; }
    mv "$OUT/train_resources.json.part" "$OUT/train_resources.json"
fi
cp "$FOLD_DIR/wallclock.json" "$OUT/wallclock.json"
log "trained: $(json "$OUT/wallclock.json" "d['iterations'], 'iterations in', d['train_seconds'], 's'" 2>/dev/null || true)"

# 4. predict with nnU-Net's own defaults (sliding window, step 0.5, Gaussian, mirroring) and
# 5. score with emseg's eval.py, the final checkpoint first, then each snapshot.
TAGS=(final)
[[ ${PREDICT_SNAPSHOTS:-1} == 1 ]] && TAGS+=($("$PY" -c "import json,sys; print(' '.join(s['checkpoint'][len('checkpoint_'):-len('.pth')] for s in json.load(open(sys.argv[1]))['snapshots']))" "$OUT/wallclock.json"))
PREDICT_FLAGS=()
[[ $PROBABILITIES == 1 ]] && PREDICT_FLAGS+=(--save_probabilities)
[[ ${TTA:-1} == 0 ]] && PREDICT_FLAGS+=(--disable_tta)
for TAG in "${TAGS[@]}"; do
    CKPT=checkpoint_$TAG.pth
    PDIR=$OUT/predict/$TAG
    if [[ ! -f $PDIR/resources.json || ! -f $PDIR/prediction.tif ]]; then
        rm -rf "$PDIR"
        mkdir -p "$PDIR"
        log "predict $CKPT (log: $OUT/logs/predict_$TAG.log)"
        "$PY" "$HERE/measure.py" "$PDIR/resources.json.part" -- /usr/bin/time -v -o "$PDIR/time.txt" \
            "$PY" "$HERE/nnunet_cli.py" predict -i "$IMAGES_TS" -o "$PDIR/nnunet" -d "$DATASET_ID" \
            -c 2d -f all -tr "$TRAINER" -chk "$CKPT" -device cpu "${PREDICT_FLAGS[@]}" \
            >"$OUT/logs/predict_$TAG.log" 2>&1 || { tail -40 "$OUT/logs/predict_$TAG.log"; exit 1; }
        echo "${PREDICT_FLAGS[*]}" >"$PDIR/predict_flags.txt" # result.py records them
        # shellcheck disable=SC2086
        "$PY" "$HERE/to_tif.py" "$PDIR/nnunet" "$TEST_CASE" "$PDIR/prediction.tif" --shape $TEST_SHAPE \
            >>"$OUT/logs/predict_$TAG.log" 2>&1
        rm -f "$PDIR/nnunet/$TEST_CASE.npz" # 2 x the test volume in float32: the tif has it
        mv "$PDIR/resources.json.part" "$PDIR/resources.json"
    fi
    EDIR=$OUT/eval/$TAG
    if [[ ! -f $EDIR/metrics.json ]]; then
        log "eval.py $TAG"
        THREADS_ARG=()
        [[ -n ${TORCH_THREADS:-} ]] && THREADS_ARG=(torch_threads="$TORCH_THREADS")
        (cd "$ROOT" && "$EMSEG_PY" eval.py prediction="$PDIR/prediction.tif" \
            data.test_mask="$TEST_MASK" hydra.run.dir="$EDIR" progress=false "${THREADS_ARG[@]}") \
            >"$OUT/logs/eval_$TAG.log" 2>&1 || { tail -40 "$OUT/logs/eval_$TAG.log"; exit 1; }
    fi
done

# 6. result.json
"$PY" "$HERE/result.py" "$OUT"
log "done: $OUT/result.json"
