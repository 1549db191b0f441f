"""Which model arguments name a bioimage.io package, and ``model=`` on the command line.

Kept free of heavy imports: :func:`is_package` is asked for every ``ckpt_path``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PACKAGE_NAMES", "is_package", "model_argument"]

# File names of a package's description (bioimage.io allows both, or `<name>.bioimageio.yaml`).
PACKAGE_NAMES = ("rdf.yaml", "bioimageio.yaml")


def is_package(path: str | Path) -> bool:
    """Whether ``path`` names a bioimage.io package: a ``.zip`` file or its ``rdf.yaml``."""
    name = Path(str(path)).name.lower()
    return name.endswith(".zip") or name in PACKAGE_NAMES or name.endswith(".bioimageio.yaml")


def model_argument(argv: Sequence[str]) -> list[str]:
    """``model=<package>`` on an eval.py / predict.py command line, as ``ckpt_path=<package>``.

    ``model`` is a config group of train.py (conf/model), so Hydra would refuse the key on
    the inference scripts' command lines; the package travels as ``ckpt_path`` from here on
    (blockwise workers receive it the same way), and the pipeline
    reads it as a package (:func:`emseg.inference.checkpoint.load_model`).

    Exits with code 2 and one line for ``model=`` together with ``ckpt_path=``, or a
    ``model=`` that does not name a package.
    """
    out = list(argv)
    models = [i for i, arg in enumerate(out) if arg.startswith("model=")]
    if not models:
        return out
    value = out[models[-1]].split("=", 1)[1]
    if any(arg.startswith(("ckpt_path=", "+ckpt_path=", "++ckpt_path=")) for arg in out):
        _exit(f"model={value} and ckpt_path=: give one (model= takes a bioimage.io package)")
    if not is_package(value):
        _exit(
            f"model: {value} is not a bioimage.io package (give package.zip or its rdf.yaml; an "
            "emseg checkpoint goes in ckpt_path=)"
        )
    for index in models:
        out[index] = "ckpt_path=" + out[index].split("=", 1)[1]
    return out


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
