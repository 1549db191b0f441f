#!/usr/bin/env bash
# The command run on the GPU machine (the device tool's `run`, carry: ["outputs/gpu_stage"]):
#   bash benchmarks/gpu_check/device.sh
# Installs the staged wheels (hydra-core, omegaconf, antlr4, smp: the machine has the rest),
# then runs the GPU check on the staged data, writing report.json, the fp16 weight parts,
# gpu_run.tar.gz and this log into $OUT (7 files, < 64 MiB together).
# Built by `make gpu-stage` here first. STAGE / OUT may be set; extra arguments go to the check.
set -uo pipefail
STAGE=${STAGE:-outputs/gpu_stage}
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if ! compgen -G "$STAGE/wheels/*.whl" >/dev/null; then
  echo "error: no wheels in $STAGE/wheels (run make gpu-stage first, carry $STAGE)" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/emseg-site "$STAGE"/wheels/*.whl || exit 2
export PYTHONPATH="/tmp/emseg-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi || true
python3 -m benchmarks.gpu_check --stage "$STAGE" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
