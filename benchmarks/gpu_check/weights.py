"""A trained network as fp16 parts small enough to come back from the GPU machine (files of at
most 16 MiB), and their reassembly into a checkpoint that ``eval.py`` reads on the CPU.

On the GPU: :func:`export_parts` writes ``<prefix>.part00, .part01, ...`` and ``<prefix>.json``
(the parts' sizes and SHA-256) from the best checkpoint of the ``experiment=gpu`` run: the
network's floating-point tensors as float16 (the VGG16-UNet: 23.7 M parameters, ~45 MiB, three
parts), integer buffers as they are, and the run's ``emseg_config`` (normalisation, 2.5D
context, the inference settings chosen on validation). No optimizer state: nothing is resumed.

On the CPU, ``python -m benchmarks.gpu_check.weights <dir with the parts> --out gpu.ckpt
[--data-dir data] [--choose-settings]`` (``make gpu-eval``) checks every part, joins them, casts
the weights back to float32 and writes a checkpoint with ``state_dict`` and ``emseg_config``,
which is all that ``eval.py`` / ``predict.py`` read (:func:`emseg.inference.load_checkpoint`).
``--data-dir`` points the config's volumes at this machine's copies of the same files (the GPU
machine's were a staged subset in a temporary directory; the validation hold-out, the last 16
slices, is the same). ``--choose-settings`` then runs the settings search after training
(:func:`emseg.settings_search.choose_and_store`, ``conf/train.yaml``'s ``settings_search``) on
that hold-out and stores the chosen block in the checkpoint, as ``train.py`` does after fit:
the GPU check leaves it to the CPU, since its 3D medians run on the CPU and would take minutes
of GPU time there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from emseg.errors import ConfigError, EmsegError
from emseg.io.atomic import atomic_path, write_json_atomic
from emseg.io.checkpoint import read_checkpoint

__all__ = ["PART_BYTES", "assemble", "choose_settings", "export_parts", "main"]

# The volume keys of a run's data config that name files, retargeted by --data-dir.
VOLUME_KEYS = ("train_image", "train_mask", "test_image", "test_mask")
# Under the 16 MiB a returned file may have.
PART_BYTES = int(15.5 * 2**20)
PREFIX = "gpu_weights"


def _half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half() if tensor.is_floating_point() else tensor


def export_parts(
    ckpt: Path, out_dir: Path, prefix: str = PREFIX, part_bytes: int = PART_BYTES
) -> dict[str, Any]:
    """Write the network of ``ckpt`` as float16 parts into ``out_dir``; return the manifest.

    Raises:
        CheckpointError: ``ckpt`` is not an emseg checkpoint.
    """
    checkpoint = read_checkpoint(ckpt)
    if "emseg_config" not in checkpoint:
        raise ConfigError(f"{ckpt}: no emseg_config (not written by emseg's train.py)")
    state = {k: _half(v.detach().cpu()) for k, v in checkpoint["state_dict"].items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "emseg_config": checkpoint["emseg_config"]}, buffer)
    data = buffer.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, start in enumerate(range(0, len(data), part_bytes)):
        chunk = data[start : start + part_bytes]
        name = f"{prefix}.part{index:02d}"
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(chunk)
        parts.append(
            {"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()}
        )
    manifest = {
        "source_checkpoint": Path(ckpt).name,
        "dtype": "float16",
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point())),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "parts": parts,
    }
    write_json_atomic(out_dir / f"{prefix}.json", manifest)
    return manifest


def _retarget(config: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """``config`` with its EPFL volumes at ``data_dir/epfl/<same file name>``.

    Raises:
        ConfigError: a volume of the run is not in ``data_dir/epfl``.
    """
    data = dict(config.get("data") or {})
    for key in VOLUME_KEYS:
        if data.get(key):
            local = Path(data_dir) / "epfl" / Path(str(data[key])).name
            if not local.is_file():
                raise ConfigError(f"--data-dir: {local} not found (the run's data.{key})")
            data[key] = str(local)
    return {**config, "data": data}


def assemble(
    parts_dir: Path, out: Path, prefix: str = PREFIX, data_dir: Path | None = None
) -> dict[str, Any]:
    """Join the parts in ``parts_dir`` into the float32 checkpoint ``out``; return the manifest.

    Args:
        data_dir: point the run's volumes at this data directory's files (module docstring).

    Raises:
        ConfigError: the manifest or a part is missing, a part is not what was written, or a
            volume is not in ``data_dir``.
    """
    manifest_path = Path(parts_dir) / f"{prefix}.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: not found (the GPU check writes it with the parts)")
    manifest = json.loads(manifest_path.read_text())
    data = bytearray()
    for part in manifest["parts"]:
        path = Path(parts_dir) / part["name"]
        if not path.is_file():
            raise ConfigError(f"{path}: missing part of the returned weights")
        chunk = path.read_bytes()
        if hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise ConfigError(f"{path}: damaged (SHA-256 differs from {manifest_path.name})")
        data += chunk
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ConfigError(f"{parts_dir}: the joined parts differ from what was exported")
    bundle = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in bundle["state_dict"].items()}
    config = bundle["emseg_config"]
    if data_dir is not None:
        config = _retarget(config, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "emseg_config": config}, tmp)
    return manifest


def choose_settings(ckpt: Path) -> dict[str, Any]:
    """The settings search after training on ``ckpt``'s validation hold-out (stored in it;
    ``settings_search.json`` beside it); return the stored evaluation block."""
    from hydra.utils import instantiate

    from benchmarks.bench.common import compose_config
    from emseg.settings_search import choose_and_store

    search = instantiate(compose_config("train", ["experiment=gpu"]).settings_search)
    config = read_checkpoint(ckpt)["emseg_config"]
    return choose_and_store(ckpt, search, config["data"], Path(ckpt).parent)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu_check.weights DIR --out CKPT``: reassemble the weights."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check.weights", description=__doc__
    )
    parser.add_argument("parts_dir", type=Path, help="where the GPU check's files came back")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    parser.add_argument("--data-dir", type=Path, default=None, help="this machine's data/")
    parser.add_argument(
        "--choose-settings", action="store_true", help="settings search on validation"
    )
    args = parser.parse_args(argv)
    if args.choose_settings and args.data_dir is None:
        parser.error("--choose-settings reads the validation hold-out: give --data-dir too")
    try:
        manifest = assemble(args.parts_dir, args.out, data_dir=args.data_dir)
        print(
            f"wrote {args.out}: {manifest['parameters']:,} parameters from "
            f"{len(manifest['parts'])} fp16 parts of {manifest['source_checkpoint']}"
        )
        if args.choose_settings:
            block = choose_settings(args.out)
            print(f"chosen on validation and stored: {block}")
    except EmsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
