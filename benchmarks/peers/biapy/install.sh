#!/usr/bin/env bash
# Install the BiaPy peer into its own virtual environment (idempotent: a stamp file makes a
# rerun a no-op). Usage: bash benchmarks/peers/biapy/install.sh [venv_dir]
#   default venv: /work/main/.peers/biapy/venv (git-ignored, like everything under .peers/)
# torch / torchvision are installed first, pinned to the releases this machine's pip serves from
# local disk (a pip constraint caps them at 2.14.1 / 0.29.1); biapy 3.7.1 (the newest on PyPI)
# accepts them (it requires torch>=2.9,<3 and torchvision>=0.24,<1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="${1:-${BIAPY_VENV:-$REPO/.peers/biapy/venv}}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
BIAPY_VERSION=3.7.1
STAMP="$VENV/.installed-biapy-$BIAPY_VERSION-torch-$TORCH_VERSION"
PY="${PYTHON:-python3}"

if [ -f "$STAMP" ]; then
    echo "[biapy install] already installed ($STAMP)"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --no-input)

"${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# biapy and what it needs (its own pins: bioimageio.core 0.9.6, timm 1.0.14, xarray 2025.1,
# torchmetrics 1.4, zarr>=3.1.5 ...); psutil and tifffile for the scripts here (RSS, TIFF I/O).
# The torch pins are repeated so that no resolver step can move them.
"${PIP[@]}" "biapy==$BIAPY_VERSION" psutil tifffile \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
"$VENV/bin/python" -c "import biapy, torch; print('[biapy install] biapy', biapy.__version__, 'torch', torch.__version__)"
touch "$STAMP"
