#!/usr/bin/env bash
# Install the nnU-Net v2 peer into its own virtual environment:
#   bash benchmarks/peers/nnunet/install.sh [run_dir]
# Creates .peers/nnunet/venv (git-ignored) with torch and a pinned nnunetv2, then copies the
# wall-clock trainer (nnUNetTrainer_WallClock.py, beside this script) into the venv's
# nnunetv2/training/nnUNetTrainer/ package: nnU-Net finds a trainer class given by `-tr NAME`
# only by searching that package (recursive_find_python_class), so the file has to live there.
# Idempotent: a stamp file makes a rerun a no-op (only the trainer file is re-copied when it
# changed). With run_dir given, the installed versions (pip freeze) are written to
# run_dir/pip_freeze.txt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER_DIR=${NNUNET_PEER_DIR:-$ROOT/.peers/nnunet}
VENV=$PEER_DIR/venv
PY=$VENV/bin/python

TORCH_VERSION=2.14.1 # the machine's pip constraint caps torch here (taken from local disk)
NNUNET_VERSION=2.8.1 # newest nnunetv2 on PyPI; works with torch 2.14.1
STAMP=$VENV/.installed-nnunetv2-$NNUNET_VERSION-torch-$TORCH_VERSION

# Be gentle with a shared 2-core machine unless told otherwise.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

if [[ ! -f $STAMP ]]; then
    echo "[nnunet/install] creating $VENV"
    mkdir -p "$PEER_DIR"
    test -x "$PY" || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
    "$PY" -m pip install --quiet "nnunetv2==$NNUNET_VERSION" psutil
    "$PY" -c "import torch, nnunetv2; print('[nnunet/install] torch', torch.__version__)"
    touch "$STAMP"
else
    echo "[nnunet/install] $VENV already installed ($(basename "$STAMP"))"
fi

# The trainer subclass must sit inside nnunetv2.training.nnUNetTrainer to be found by name.
TRAINER_PKG=$("$PY" -c "import os, nnunetv2.training.nnUNetTrainer as p; print(os.path.dirname(p.__file__))")
if ! cmp -s "$HERE/nnUNetTrainer_WallClock.py" "$TRAINER_PKG/nnUNetTrainer_WallClock.py"; then
    cp "$HERE/nnUNetTrainer_WallClock.py" "$TRAINER_PKG/nnUNetTrainer_WallClock.py"
    echo "[nnunet/install] copied nnUNetTrainer_WallClock.py into $TRAINER_PKG"
fi

if [[ $# -ge 1 ]]; then
    mkdir -p "$1"
    "$PY" -m pip freeze >"$1/pip_freeze.txt"
fi
