#!/usr/bin/env bash
# Spot-check for issue 16 "same behaviour": the same commands on the code in $1, outputs in $2.
set -euo pipefail
repo=$(cd "$1" && pwd); mkdir -p "$2"; out=$(cd "$2" && pwd)
cd $repo
PY=${PY:-$repo/.venv/bin/python}
$PY train.py experiment=fast model.encoder_weights=null trainer.max_epochs=2 \
  trainer.limit_train_batches=10 trainer.check_val_every_n_epoch=1 data.num_workers=0 \
  logger=none hydra.run.dir=$out/train > $out/train.log 2>&1
ckpt=$(ls $out/train/checkpoints/best-*.ckpt | head -n1)
$PY eval.py ckpt_path=$ckpt progress=false hydra.run.dir=$out/eval > $out/eval.log 2>&1
$PY eval.py ckpt_path=$ckpt split=val progress=false hydra.run.dir=$out/eval_val > $out/eval_val.log 2>&1
$PY -c "import tifffile; v=tifffile.imread('data/epfl/testing.tif'); tifffile.imwrite('$out/in5.tif', v[:5])"
$PY predict.py ckpt_path=$ckpt input=$out/in5.tif output=$out/probs.tif mask_output=$out/mask.tif \
  postprocess.min_size=50 progress=false hydra.run.dir=$out/predict > $out/predict.log 2>&1
$PY export.py ckpt_path=$ckpt format=onnx output=$out/model hydra.run.dir=$out/export > $out/export.log 2>&1
sha256sum $out/probs.tif $out/mask.tif > $out/sums.txt
echo done
