#!/usr/bin/env bash
# The BiaPy peer end to end: install -> prepare -> train (wall-clock budget) -> predict (BiaPy's
# own test phase, final checkpoint and each snapshot) -> score (emseg's eval.py) -> result.json.
#
#   bash benchmarks/peers/biapy/run.sh <out_dir>
#
# Environment:
#   BUDGET_S     training wall-clock budget in seconds, from BiaPy's launch (default 7200;
#                SMOKE=1: 180)
#   SNAPSHOTS_S  training times (s) at which BiaPy's best checkpoint so far is copied and later
#                predicted + scored (default 1800,3600,5400,7200); times at or past
#                the end of training are the final model (SMOKE=1: 90)
#   SMOKE=1      tiny crop of the volumes (8 x 256 x 384) and a 180 s budget: a pipeline check
#   PREDICT_SNAPSHOTS=0  predict + score the final model only (each BiaPy test phase on the full
#                test volume costs hours on this CPU: 8-way TTA over ~48 patches per slice)
#   PREDICT_SNAPSHOTS="snapshot_3600s snapshot_5400s"  the final model, then these snapshots in
#                this order (a session that cannot hold every prediction does the ones that
#                matter first; the rest resume later with the same command); "final" in the
#                list puts the final model where it stands ("snapshot_3600s final")
#   TTA=0        predict without the recipe's 8-way TTA (TEST.AUGMENTATION false; the test
#                config and result.json's config.summary.test_tta record it): for a session that
#                cannot hold 2 h of training and an 8-way test phase
#   BIAPY_NUM_CPUS  BiaPy's SYSTEM.NUM_CPUS (default -1: all cores; SMOKE=1: 1)
#   BIAPY_VENV   the peer's venv (default <repo>/.peers/biapy/venv)
# Resumable: each step is skipped when its output exists (install: stamp; prepare: stamp;
# train: train.json; predict: predict/<name>/predict.json; score: eval/<name>/metrics.json).
# An interrupted training (no train.json) starts again from scratch.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: [SMOKE=1] [BUDGET_S=7200] [SNAPSHOTS_S=1800,3600,5400,7200] $0 <out_dir>" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
SMOKE="${SMOKE:-0}"
export SMOKE
if [ "$SMOKE" = "1" ]; then
    # 180 s: BiaPy's start-up (~15 s alone, over a minute under `nice` on busy cores) and a
    # first epoch of 3 iterations must fit; raise BUDGET_S when the cores are shared
    BUDGET_S="${BUDGET_S:-180}"
    SNAPSHOTS_S="${SNAPSHOTS_S:-90}"
    DATA="${BIAPY_DATA:-$REPO/.peers/biapy/data/smoke}"
    # a pipeline check should not compete for the cores: one torch thread unless told otherwise
    export BIAPY_NUM_CPUS="${BIAPY_NUM_CPUS:-1}"
else
    BUDGET_S="${BUDGET_S:-7200}"
    SNAPSHOTS_S="${SNAPSHOTS_S:-1800,3600,5400,7200}"
    DATA="${BIAPY_DATA:-$REPO/.peers/biapy/data/full}"
fi
VENV="${BIAPY_VENV:-$REPO/.peers/biapy/venv}"
PY="$VENV/bin/python"
EMSEG_PY="$REPO/.venv/bin/python"
log() { echo "[biapy run $(date +%H:%M:%S)] $*"; }

# 1. install (own venv; stamp makes it a no-op once done)
bash "$HERE/install.sh" "$VENV"
[ -f "$OUT/pip_freeze.txt" ] || "$PY" -m pip freeze > "$OUT/pip_freeze.txt"

# 2. prepare (slices for BiaPy; shared by runs of the same kind)
"$PY" "$HERE/prepare.py" --out "$DATA" $([ "$SMOKE" = "1" ] && echo --smoke)
cp "$DATA/done" "$OUT/prepare.json"
TEST_MASK="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["test_mask"])' "$DATA/done")"
SHAPE="$("$PY" -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["test"]["shape_zyx"])))' "$DATA/done")"

# 3. train under the wall-clock budget
if [ ! -f "$OUT/train.json" ]; then
    rm -rf "$OUT/predict" "$OUT/eval"  # they would belong to an earlier training
    "$PY" "$HERE/peer.py" config --data "$DATA" --out "$OUT/config/train.yaml" --phase train
    log "training for $BUDGET_S s (snapshots at $SNAPSHOTS_S s)"
    "$PY" "$HERE/peer.py" train --config "$OUT/config/train.yaml" --job-dir "$OUT/train_job" \
        --budget "$BUDGET_S" --snapshots "$SNAPSHOTS_S" --out "$OUT/train.json"
else
    log "train.json exists: training skipped"
fi

# 4. predict with BiaPy's own test phase: the final model and every distinct snapshot
NAMES="$("$PY" - "$OUT/train.json" "${PREDICT_SNAPSHOTS:-1}" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
by_name = {s["name"]: s for s in t["snapshots"]}
if sys.argv[2] == "0":
    recs = [t["final"]]
elif sys.argv[2] == "1":
    recs = [t["final"]] + t["snapshots"]
else:
    names = sys.argv[2].split()
    by_name["final"] = t["final"]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        sys.exit(f"run.sh: PREDICT_SNAPSHOTS names {unknown}; train.json has {sorted(by_name)}")
    recs = [by_name[n] for n in (names if "final" in names else ["final", *names])]
for rec in recs:
    if rec.get("checkpoint") and "same_as" not in rec:
        print(rec["name"], rec["checkpoint"])
EOF
)"
while read -r NAME CKPT; do
    [ -n "$NAME" ] || continue
    if [ -f "$OUT/predict/$NAME/predict.json" ]; then
        log "prediction $NAME exists: skipped"
        continue
    fi
    "$PY" "$HERE/peer.py" config --data "$DATA" --out "$OUT/config/test_$NAME.yaml" --phase test \
        --ckpt "$CKPT"
    log "predicting $NAME"
    "$PY" "$HERE/peer.py" predict --config "$OUT/config/test_$NAME.yaml" \
        --job-dir "$OUT/predict/$NAME/job" --shape "$SHAPE" \
        --out-tif "$OUT/predict/$NAME/prediction.tif" --out "$OUT/predict/$NAME/predict.json"
done <<< "$NAMES"

# 5. score every prediction with emseg's eval.py against the same labels
while read -r NAME CKPT; do
    [ -n "$NAME" ] || continue
    if [ -f "$OUT/eval/$NAME/metrics.json" ]; then
        log "metrics $NAME exist: skipped"
        continue
    fi
    log "scoring $NAME"
    (cd "$REPO" && "$EMSEG_PY" eval.py "prediction=$OUT/predict/$NAME/prediction.tif" \
        "data.test_mask=$TEST_MASK" "hydra.run.dir=$OUT/eval/$NAME" progress=false)
done <<< "$NAMES"

# 6. result.json
"$PY" "$HERE/peer.py" summarize --out-dir "$OUT" > /dev/null
log "wrote $OUT/result.json"
"$PY" - "$OUT/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
m, p = r.get("score") or {}, r.get("predict") or {}
print(f"BiaPy: fg IoU {m.get('fg_iou')}, mean IoU {m.get('mean_iou')}, Dice {m.get('dice')}; "
      f"train {r['train_s']} s ({r['epochs_completed']} epochs, {r['iterations']} it, "
      f"{r['s_per_iteration']} s/it), predict {p.get('wall_s')} s, "
      f"peak RSS train {r['train']['peak_rss_mb']} MB / predict {p.get('peak_rss_mb')} MB")
EOF
