"""Rebuild the network and its input preprocessing from an emseg checkpoint alone.

``train.py`` stores the resolved run configuration in every checkpoint (``emseg_config``), so
the model architecture, the number of input channels (2.5D context) and the intensity
normalisation (with ``data.percentiles``: the per-volume percentile mode) come from the
checkpoint, never from the user. Encoder weights are never
downloaded here: the network is built with ``encoder_weights=None`` and then receives the
trained state dict.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from emseg.data.normalization import Preprocessing, check_percentiles
from emseg.errors import ConfigError
from emseg.io.checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint_path

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Preprocessing",
    "load_checkpoint",
    "load_model",
    "preprocessing_from_config",
]

log = logging.getLogger(__name__)

_NET_PREFIX = "net."
# Only emseg's own factories may be called from a checkpoint's config: a checkpoint is data,
# and `_target_` would otherwise let a crafted file call any importable function.
_ALLOWED_TARGET_PREFIX = "emseg."


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the network in eval mode, its preprocessing and its run config."""

    net: nn.Module
    preprocessing: Preprocessing
    config: dict[str, Any]
    path: Path


def _check_targets(node: Any, path: Path) -> None:
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(_ALLOWED_TARGET_PREFIX):
            raise CheckpointError(
                f"ckpt_path: {path} names model factory {target!r}; only emseg.* factories "
                "are built from checkpoints"
            )
        for value in node.values():
            _check_targets(value, path)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_targets(value, path)


def preprocessing_from_config(config: Mapping[str, Any], path: Path) -> Preprocessing:
    """The input preprocessing a run config describes (``data.context / mean / std /
    percentiles``); ``path`` names the checkpoint in errors.

    Raises:
        CheckpointError: the config lacks them or holds invalid values.
    """
    data = config.get("data")
    if not isinstance(data, Mapping) or not {"mean", "std", "context"} <= set(data):
        raise CheckpointError(
            f"ckpt_path: {path} has no data.mean / data.std / data.context in its emseg_config"
        )
    try:
        percentiles = check_percentiles(data.get("percentiles"))
        pre = Preprocessing(
            int(data["context"]), float(data["mean"]), float(data["std"]), percentiles
        )
    except (TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"ckpt_path: {path} has invalid data settings ({err})") from err
    if pre.context < 0 or not pre.std > 0:
        raise CheckpointError(
            f"ckpt_path: {path} has invalid normalisation: context {pre.context}, std {pre.std}"
        )
    return pre


def _instantiate(model_cfg: dict[str, Any], in_channels: int, path: Path) -> nn.Module:
    try:
        # The checkpoint holds every weight: an smp encoder is built without its download.
        blank = {"encoder_weights": None} if "encoder_weights" in model_cfg else {}
        return instantiate(model_cfg, in_channels=in_channels, **blank)
    except Exception as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"ckpt_path: cannot rebuild the model described in {path} ({detail})"
        ) from err


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path, assign: bool) -> None:
    try:
        net.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"ckpt_path: {path} weights do not fit the model in its config: {detail}"
        ) from err


def _build(
    model_cfg: dict[str, Any], in_channels: int, state: dict[str, torch.Tensor], path: Path
) -> nn.Module:
    """The network with ``state`` loaded, built on the meta device to skip random init."""
    with torch.device("meta"):
        net = _instantiate(model_cfg, in_channels, path)
    _load_state(net, state, path, assign=True)
    tensors = itertools.chain(net.parameters(), net.buffers())
    if any(tensor.is_meta for tensor in tensors):  # a tensor the state dict does not hold
        net = _instantiate(model_cfg, in_channels, path)
        _load_state(net, state, path, assign=False)
    return net


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load the network and preprocessing from a checkpoint written by ``train.py``.

    Args:
        path: a Lightning ``.ckpt`` whose ``state_dict`` holds the network under ``net.`` and
            whose ``emseg_config`` is the resolved training config, or a training run
            directory (its best checkpoint, :func:`emseg.io.resolve_checkpoint_path`).
        device: where to put the network.

    Returns:
        The network (eval mode, gradients off, float32) with its preprocessing and config.

    Raises:
        CheckpointError: the file is missing, empty, unreadable, lacks ``emseg_config``, or
            its weights do not fit the model its config describes.
    """
    path = resolve_checkpoint_path(path)
    checkpoint = read_checkpoint(path)
    config = checkpoint.get("emseg_config")
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"ckpt_path: {path} has no emseg_config: it was not written by emseg's train.py "
            "(or by a version that did not store its configuration)"
        )
    model_cfg = config.get("model")
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise CheckpointError(f"ckpt_path: {path} has no model._target_ in its emseg_config")
    _check_targets(model_cfg, path)
    pre = preprocessing_from_config(config, path)
    # Copies, so that the network does not depend on the memory-mapped file (which a running
    # training may overwrite).
    state = {
        key[len(_NET_PREFIX) :]: value.clone()
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(_NET_PREFIX)
    }
    del checkpoint
    if not state:
        raise CheckpointError(f"ckpt_path: {path} has no network weights (no 'net.*' keys)")
    net = _build(dict(model_cfg), pre.in_channels, state, path)
    net = net.float().eval().requires_grad_(False).to(device)
    mode = "" if pre.percentiles is None else ", after each volume's percentiles {:g}-{:g}"
    log.info(
        "checkpoint %s: %s, %d input channel(s) (context %d), mean %.4g, std %.4g%s",
        path,
        model_cfg.get("encoder_name", model_cfg["_target_"]),
        pre.in_channels,
        pre.context,
        pre.mean,
        pre.std,
        mode.format(*(pre.percentiles or ())),
    )
    return Checkpoint(net=net, preprocessing=pre, config=dict(config), path=path)


def load_model(path: str | Path) -> Checkpoint:
    """What eval.py / predict.py run: an emseg checkpoint (:func:`load_checkpoint`) or a
    bioimage.io package (``.zip`` / ``rdf.yaml``: :func:`emseg.zoo.load.load_package`, the
    package's network and declared processing in the same shape)."""
    from emseg.zoo.paths import is_package

    if is_package(path):
        from emseg.zoo.load import load_package

        return load_package(path)
    return load_checkpoint(path)
