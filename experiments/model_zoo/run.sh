#!/usr/bin/env bash
# Evidence of issue 21 (BioImage Model Zoo packages): the experiment=fast checkpoint of this
# machine, its bioimage.io package, bioimageio.core's model test, and the test volume's fg IoU
# through the package (emseg's own pipeline) against the checkpoint's.
# Every run niced on the shared 2-core machine, one torch thread (OMP_NUM_THREADS=1); the two
# whole-volume evaluations ran one after the other, from the same tree.
set -euo pipefail
CKPT=/work/runs/fast/checkpoints/best-epoch025-fg_iou0.8744.ckpt
OUT=outputs/model_zoo
RUN="nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python"

# 1. the checkpoint on the whole EPFL test volume (its stored settings: border_pad 0, median 7)
$RUN eval.py ckpt_path=$CKPT hydra.run.dir=$OUT/eval_checkpoint progress=false
# 2. the package (the fast checkpoint records no data.voxel_size: EPFL's 5 nm given here);
#    bioimageio.core's model test runs inside export.py (report: $OUT/fast.test.{json,md})
$RUN export.py ckpt_path=$CKPT format=bioimageio 'voxel_size=[5,5,5]' \
    'bioimageio.authors=[{name: emseg contributors}]' \
    bioimageio.metrics=$OUT/eval_checkpoint/metrics.json output=$OUT/fast overwrite=true \
    hydra.run.dir=$OUT/export_fast
# 3. the zoo's own command-line test of the written package
nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/bioimageio test $OUT/fast.zip --devices '["cpu"]' \
    --summary experiments/model_zoo/bioimageio_test_cli.md
# 4. the same test volume predicted through the package by eval.py (model= is the package)
$RUN eval.py model=$OUT/fast.zip hydra.run.dir=$OUT/eval_package progress=false
# 5. the record: rdf.yaml and the package's small files, the reports, results.json
.venv/bin/python experiments/model_zoo/record.py
