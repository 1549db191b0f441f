"""Export a checkpoint's network for use without emseg: ``python export.py ckpt_path=<ckpt>``.

Writes ``<output>.pt`` (TorchScript, ``format=torchscript``) or ``<output>.onnx`` (ONNX,
``format=onnx``) and ``<output>.json``, a model card with everything a user of the file needs:
the preprocessing (``(x / dtype_max - mean) / std``, the 2.5D input channels), the input size
rule (height and width multiples of the network's stride), the tile size, overlap and border
padding of the inference pipeline (``conf/inference`` beneath the checkpoint's own settings,
as eval.py / predict.py use them), and the output (logits; foreground probability = sigmoid).
Neither file format holds the preprocessing; for a checkpoint trained with
``data.percentiles`` the card states the per-volume rule (each volume's own percentiles,
measured by the user's code) instead of fixed numbers (:func:`_preprocessing_card`).
The pipeline is built by :func:`emseg.inference.build_pipeline`, and both files are written
through :func:`emseg.io.atomic_paths`: they appear together, only when both are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from emseg.errors import ConfigError, EmsegError
from emseg.inference import Checkpoint, Preprocessing, build_pipeline, model_stride
from emseg.io import atomic_paths, check_output_path

__all__ = [
    "FORMATS",
    "export_onnx",
    "export_torchscript",
    "load_exported",
    "model_card",
    "output_paths",
    "run",
]

log = logging.getLogger(__name__)

# format -> file extension
FORMATS: dict[str, str] = {"torchscript": ".pt", "onnx": ".onnx"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# Exported and PyTorch outputs must agree this closely on the verification sample.
VERIFY_ATOL = 1e-3


def output_paths(output: str | Path, fmt: str) -> tuple[Path, Path]:
    """``(<output>.pt|.onnx, <output>.json)``; an ``output`` ending in that extension is kept.

    Raises:
        ConfigError: ``fmt`` is not in :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        choices = ", ".join([*FORMATS, "bioimageio"])
        raise ConfigError(f"format must be one of {choices}; got {fmt!r}")
    stem = Path(str(output))
    if stem.suffix in (FORMATS[fmt], ".json"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + FORMATS[fmt]), stem.with_name(stem.name + ".json")


def export_torchscript(net: nn.Module, path: Path) -> None:
    """Script ``net`` (shape-independent, unlike a trace) and save it to ``path``.

    Args:
        net: eval-mode network mapping float32 ``(N, C, H, W)`` images, H and W multiples of
            :func:`emseg.inference.model_stride`, to ``(N, 1, H, W)`` logits.
        path: the ``.pt`` file to write.
    """
    torch.jit.save(torch.jit.script(net), str(path))


def export_onnx(net: nn.Module, path: Path, in_channels: int, opset: int = 18) -> None:
    """Export ``net`` with dynamic batch, height and width (multiples of the stride) to ONNX.

    The weights are stored inside the file (no external data file), so it stands alone. The
    graph's input ``image`` is float32 ``(batch, C, 32*h, 32*w)``, its output ``logits``
    ``(batch, 1, 32*h, 32*w)`` (for a stride of 32).

    Args:
        net: eval-mode network, as for :func:`export_torchscript`.
        path: the ``.onnx`` file to write.
        in_channels: ``C``, the network's input channels.
        opset: ONNX opset version.
    """
    multiple = model_stride(net)
    dims = torch.export.Dim
    shapes = ({0: dims("batch", max=4096), 2: multiple * dims("h"), 3: multiple * dims("w")},)
    # Batch 2: a dimension of size 1 would be specialised by torch.export.
    example = torch.zeros(2, in_channels, 2 * multiple, 3 * multiple)
    for name in ("onnxscript", "onnx_ir"):  # one INFO line per graph rewrite otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=shapes,
        external_data=False,
        verbose=False,
    )


def load_exported(path: str | Path, fmt: str) -> Any:
    """A callable ``float32 (N, C, H, W) ndarray -> (N, 1, H, W) logits ndarray`` for a file
    written by :func:`export_torchscript` (``fmt="torchscript"``) or :func:`export_onnx`."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run_torchscript
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return run_onnx


def _verify(net: nn.Module, path: Path, fmt: str, in_channels: int) -> dict[str, Any]:
    """Run the exported file and ``net`` on one random sample: the largest difference."""
    multiple = model_stride(net)
    x = torch.randn(
        1, in_channels, 2 * multiple, 3 * multiple, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        expected = net(x).numpy()
    got = load_exported(path, fmt)(x.numpy())
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= VERIFY_ATOL:
        raise EmsegError(
            f"the exported {fmt} model differs from the checkpoint's network by {diff:.3g} "
            f"(tolerance {VERIFY_ATOL}) on a {tuple(x.shape)} sample"
        )
    return {"input_shape": list(x.shape), "max_abs_diff": diff}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _input_card(pre: Preprocessing, multiple: int) -> dict[str, Any]:
    """What the network takes: layout, 2.5D channels and the input-size rule."""
    order = (
        f"slices z-{pre.context} .. z+{pre.context} of a (Z, Y, X) volume for slice z, "
        "clamped at the volume ends"
        if pre.context
        else "the slice alone (2D)"
    )
    return {
        "name": INPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": pre.in_channels,
        "context": pre.context,
        "channel_order": order,
        "height_width_multiple_of": multiple,
        "dynamic_axes": ["batch", "height", "width"],
        "note": (
            f"pad H and W up to multiples of {multiple} (e.g. reflect) and crop the output back"
        ),
    }


def _preprocessing_card(pre: Preprocessing) -> dict[str, Any]:
    """How to normalise a volume for the exported network (it is not part of the file)."""
    scaling = (
        "integer images are divided by their dtype maximum (255 for uint8, 65535 for "
        "uint16); float images must already be in [0, 1]"
    )
    card: dict[str, Any] = {
        "formula": "(x / dtype_max - mean) / std",
        "scaling": scaling,
        "mean": pre.mean,
        "std": pre.std,
    }
    if pre.percentiles is None:
        return card
    low, high = pre.percentiles
    return {
        **card,
        "formula": (
            "(clip((x / dtype_max - p_low) / (p_high - p_low), 0, 1) - mean) / std, with p_low "
            "/ p_high the percentiles of each volume's own x / dtype_max"
        ),
        "percentiles": [low, high],
        "per_volume": (
            f"p_low / p_high are the {low:g}th / {high:g}th percentiles of every input volume's "
            "[0, 1]-scaled intensities, measured on that volume before it is predicted (emseg: "
            "at most 64 evenly spaced slices and 2**22 voxels drawn with numpy's "
            "default_rng(0), linear interpolation); the exported file does not measure them. "
            "bioimage.io equivalent: scale_range (min_percentile / max_percentile over the "
            "whole volume's z, y, x), then clip (0, 1), then fixed_zero_mean_unit_variance "
            "(mean, std)"
        ),
    }


def _tiling_card(inference: dict[str, Any]) -> dict[str, Any]:
    """The sliding-window settings the pipeline uses for this model."""
    return {
        "tile_size": inference.get("tile_size"),
        "overlap": inference.get("overlap"),
        "blending": inference.get("mode"),
        "sigma_scale": inference.get("sigma_scale"),
        "border_pad": inference.get("border_pad"),
        "padding_mode": inference.get("padding_mode"),
        "note": (
            "tiles of tile_size (null = whole slices) overlapping by overlap x tile_size, "
            "blended with Gaussian weights of sigma = sigma_scale x tile_size, after "
            "padding every slice by border_pad pixels (padding_mode)"
        ),
    }


def model_card(
    checkpoint: Checkpoint,
    fmt: str,
    model_file: str,
    sha256: str,
    inference: dict[str, Any],
    opset: int,
) -> dict[str, Any]:
    """The JSON description of an exported model: preprocessing, input rule, tiling, output.

    Args:
        checkpoint: the loaded checkpoint (network, preprocessing, run config).
        fmt: ``torchscript`` or ``onnx``.
        model_file: file name of the exported model (beside the JSON).
        sha256: its SHA-256 hex digest.
        inference: the pipeline's window settings (``tile_size``, ``overlap``, ...).
        opset: ONNX opset (recorded for ``onnx`` only).
    """
    pre = checkpoint.preprocessing
    model_cfg = checkpoint.config.get("model", {})
    card: dict[str, Any] = {
        "format": fmt,
        "model_file": model_file,
        "sha256": sha256,
        "input": _input_card(pre, model_stride(checkpoint.net)),
        "preprocessing": _preprocessing_card(pre),
        "output": {
            "name": OUTPUT_NAME,
            "channels": 1,
            "meaning": "mitochondria logits; probability = sigmoid(logits)",
            "activation": "sigmoid",
            "threshold": 0.5,
        },
        "tiling": _tiling_card(inference),
        "model": {
            "factory": str(model_cfg.get("_target_", "")),
            "encoder_name": model_cfg.get("encoder_name"),
            "source_checkpoint": str(checkpoint.path),
        },
        "versions": {"emseg": _version("emseg"), "torch": torch.__version__},
    }
    if fmt == "onnx":
        card["opset"] = opset
    return card


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.output`` (see conf/export.yaml).

    Returns:
        ``{"model": <model file>, "card": <json file>, "verified": {...} | None}``.

    Raises:
        ConfigError: unknown format, an output that exists (without ``overwrite=true``) or
            whose directory is missing, or a tile size the exported model cannot take.
        CheckpointError: the checkpoint cannot be loaded.
    """
    fmt = str(cfg.format)
    if fmt == "bioimageio":  # one bioimage.io package (emseg/zoo/export.py)
        from emseg.zoo.export import export_bioimageio

        return export_bioimageio(cfg)
    model_path, card_path = output_paths(cfg.output, fmt)
    for path, key in ((model_path, "output"), (card_path, "output (model card)")):
        check_output_path(path, key, bool(cfg.overwrite))
    pipeline = build_pipeline(cfg)
    checkpoint, inference = pipeline.checkpoint, pipeline.window.as_dict()
    net, in_channels = checkpoint.net, checkpoint.preprocessing.in_channels
    tile, stride = inference.get("tile_size"), model_stride(checkpoint.net)
    if tile is not None and int(tile) % stride:
        raise ConfigError(
            f"inference.tile_size={tile} is not a multiple of {stride}, the input size the "
            "exported model needs"
        )
    with atomic_paths(model_path, card_path) as (tmp_model, tmp_card):
        if fmt == "torchscript":
            export_torchscript(net, tmp_model)
        else:
            export_onnx(net, tmp_model, in_channels, int(cfg.opset))
        card = model_card(
            checkpoint, fmt, model_path.name, _sha256(tmp_model), inference, int(cfg.opset)
        )
        verified = _verify(net, tmp_model, fmt, in_channels) if cfg.get("verify", True) else None
        card["verified"] = verified
        tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s and %s", model_path, card_path)
    return {"model": str(model_path), "card": str(card_path), "verified": verified}
