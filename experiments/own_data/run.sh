#!/usr/bin/env bash
# The own-data evidence runs (issue 17), one after another; re-running skips finished runs.
#   bash experiments/own_data/run.sh DATA_DIR RUNS_DIR FAST_RUN
# DATA_DIR: written by experiments/own_data/prepare.py; RUNS_DIR: where the runs go (outside
# the repository); FAST_RUN: a finished `train.py experiment=fast` run directory.
set -euo pipefail
D=$1; R=$2; FAST=$3
PY=.venv/bin/python
EPFL=data/epfl
done_run() { [ -f "$1/metrics.json" ]; }

# 1. Formats: the same volume as TIFF, Zarr, HDF5, N5 and PNG slices; 100 steps, same seed,
#    the loss logged at every step (data=custom's recipe, the report's VGG16-UNet, random init).
FORMAT_ARGS="data=custom data.mean=0.548 data.std=0.119 data.val_slices=16 model.encoder_weights=null
  trainer.max_epochs=1 trainer.limit_train_batches=100 trainer.limit_val_batches=0
  trainer.num_sanity_val_steps=0 trainer.log_every_n_steps=1 test_after_fit=false
  choose_settings=false"
declare -A IMG=([tiff]=$EPFL/training.tif [zarr]=$D/train.zarr/raw [hdf5]=$D/train.h5:raw
  [n5]=$D/train.n5/raw [slices]=$D/slices/raw)
declare -A LAB=([tiff]=$EPFL/training_groundtruth.tif [zarr]=$D/train.zarr/labels
  [hdf5]=$D/train.h5:labels [n5]=$D/train.n5/labels [slices]=$D/slices/labels)
for f in tiff zarr hdf5 n5 slices; do
  done_run $R/format_$f || $PY train.py $FORMAT_ARGS data.train_image=${IMG[$f]} \
    data.train_mask=${LAB[$f]} hydra.run.dir=$R/format_$f
done

# 2. Partial labels: experiment=fast_short (600 steps) with all labels, with every tenth
#    training slice labelled, and with three 128 x 256 x 256 crops; all validate on the same fully
#    labelled hold-out (slices 149-164) at every epoch (100 steps).
PARTIAL_ARGS="experiment=fast_short model.encoder_weights=null trainer.check_val_every_n_epoch=1
  choose_settings=false"
done_run $R/labels_full || $PY train.py $PARTIAL_ARGS hydra.run.dir=$R/labels_full
done_run $R/labels_10pct || $PY train.py $PARTIAL_ARGS data.train_mask=$D/labels_10pct.tif \
  data.unlabelled=255 hydra.run.dir=$R/labels_10pct
VAL="[{image:$EPFL/training.tif,labels:$EPFL/training_groundtruth.tif,roi:[[149,165],null,null]}]"
CROPS="[{image:$EPFL/training.tif,labels:'$D/crops.h5:crop0',offset:[10,64,96]},\
{image:$EPFL/training.tif,labels:'$D/crops.h5:crop1',offset:[16,420,300]},\
{image:$EPFL/training.tif,labels:'$D/crops.h5:crop2',offset:[4,200,700]}]"
done_run $R/labels_crops || $PY train.py $PARTIAL_ARGS data.train_image=null data.train_mask=null \
  "data.volumes=$CROPS" "data.val_volumes=$VAL" hydra.run.dir=$R/labels_crops

# 3. Fine-tuning on the Lucchi++ labels: from the experiment=fast checkpoint vs from scratch,
#    the same recipe and budget (fast_short cut to 400 steps), validation every 100 steps.
done_run $R/lucchipp_scratch || $PY train.py $PARTIAL_ARGS data=lucchipp trainer.max_epochs=4 \
  hydra.run.dir=$R/lucchipp_scratch
done_run $R/lucchipp_finetune || $PY train.py $PARTIAL_ARGS data=lucchipp trainer.max_epochs=4 init_from=$FAST \
  hydra.run.dir=$R/lucchipp_finetune
