"""Checkpoint ensembles: several trained networks as one, written as one emseg checkpoint.

nnU-Net averages the softmax of its five folds; emseg averages the foreground probabilities of
any trained members that share a preprocessing and a validation hold-out
(:func:`write_ensemble`, ``python ensemble.py members=[a.ckpt,b.ckpt] output_ckpt=e.ckpt``).
The written file is an ordinary emseg checkpoint whose model is a :class:`ProbabilityMean`, so
``choose.py`` searches its settings on the shared hold-out, and ``eval.py`` / ``predict.py`` /
the blockwise engine / ``export.py`` run it unchanged, sliding window and TTA included. It
stands alone: the members' weights are copied into it (the sources may be moved or deleted).

Why by hand: smp, Lightning and torchmetrics have no model ensemble; the module is the mean of
``sigmoid(member(x))`` returned as a logit, so that every consumer of a network's logits
(``sigmoid`` in the sliding window, the loss-free export) sees the ensemble as one network.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from emseg.errors import ConfigError
from emseg.inference.checkpoint import preprocessing_from_config
from emseg.inference.sliding_window import model_stride
from emseg.io.atomic import atomic_path
from emseg.io.checkpoint import (
    CheckpointError,
    new_checkpoint_path,
    read_checkpoint,
    resolve_checkpoint_path,
)

__all__ = [
    "ENSEMBLE_TARGET",
    "HOLD_OUT_KEYS",
    "ProbabilityMean",
    "build_ensemble",
    "member_validation",
    "run",
    "write_ensemble",
]

log = logging.getLogger(__name__)

ENSEMBLE_TARGET = "emseg.ensemble.build_ensemble"
# The data keys that define a run's validation hold-out: members must agree on them, or a
# settings search on the ensemble would score some members on slices they trained on.
HOLD_OUT_KEYS = ("train_image", "train_mask", "volumes", "val_slices", "val_volumes", "voxel_size")
_NET_PREFIX = "net."
# Probabilities are clipped this far from 0 and 1 before the logit, so that a saturated
# member gives a finite logit (sigmoid of it is the mean again to within 1e-6).
_EPS = 1e-6


class ProbabilityMean(nn.Module):
    """The mean foreground probability of its members, as a logit.

    Args:
        members: networks mapping float ``(N, C, y, x)`` to ``(N, K, y, x)`` logits (channel 0
            is the foreground), all with the same input channels.

    ``forward(x)`` maps ``(N, C, y, x)`` to ``(N, 1, y, x)`` float32 logits of the mean of the
    members' ``sigmoid`` (channel 0). ``output_stride`` is the least common multiple of the
    members' input multiples (:func:`emseg.inference.model_stride`).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.eps = _EPS  # an attribute, not a global: TorchScript (export.py) reads it
        self.output_stride = math.lcm(*(model_stride(member) for member in members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x[:, :1], dtype=torch.float32)
        for member in self.members:
            total = total + torch.sigmoid(member(x)[:, :1].float())
        return torch.logit(total / len(self.members), eps=self.eps)


def _plain(node: Any) -> Any:
    plain = isinstance(node, DictConfig | ListConfig)
    return OmegaConf.to_container(node, resolve=True) if plain else node


def build_ensemble(members: Sequence[Mapping[str, Any]], in_channels: int) -> ProbabilityMean:
    """The ensemble's network from its members' model configs (an ensemble checkpoint's
    ``model`` block; the weights come from the checkpoint, so encoders start blank).

    Args:
        members: each member's ``model`` config (``_target_`` and its arguments).
        in_channels: input channels of every member (``2 * data.context + 1``).
    """
    nets = []
    for member in members:
        cfg = dict(_plain(member))
        blank = {"encoder_weights": None} if "encoder_weights" in cfg else {}
        nets.append(instantiate(cfg, in_channels=in_channels, **blank))
    return ProbabilityMean(nets)


def _member(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    source = resolve_checkpoint_path(path, label="members")
    checkpoint = read_checkpoint(source, label="members")
    config = checkpoint.get("emseg_config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise CheckpointError(
            f"members: {source} has no emseg_config with a model: not written by emseg's train.py"
        )
    if config["model"].get("_target_") == ENSEMBLE_TARGET:
        raise ConfigError(
            f"members: {source} is itself an ensemble; list its members instead "
            f"({', '.join(config.get('ensemble', {}).get('members', [])) or 'see its config'})"
        )
    state = {
        key[len(_NET_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(_NET_PREFIX)
    }
    if not state:
        raise CheckpointError(f"members: {source} has no network weights (no 'net.*' keys)")
    return source, dict(config), state


def _check_compatible(sources: Sequence[Path], configs: Sequence[Mapping[str, Any]]) -> None:
    """Same preprocessing (one input for all) and the same validation hold-out."""
    first_pre = preprocessing_from_config(configs[0], sources[0])
    first_data = configs[0].get("data") or {}
    for source, config in zip(sources[1:], configs[1:], strict=True):
        pre = preprocessing_from_config(config, source)
        if pre != first_pre:
            raise ConfigError(
                f"members: {source} normalises its input differently from {sources[0]} "
                f"({pre} vs {first_pre}); an ensemble feeds every member the same input"
            )
        data = config.get("data") or {}
        differ = [k for k in HOLD_OUT_KEYS if _plain(data.get(k)) != _plain(first_data.get(k))]
        if differ:
            detail = ", ".join(
                f"data.{k}: {data.get(k)!r} vs {first_data.get(k)!r}" for k in differ
            )
            raise ConfigError(
                f"members: {source} and {sources[0]} have different validation hold-outs "
                f"({detail}); the ensemble's settings search would score a member on what it "
                "trained on"
            )


def member_validation(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """A member's validation record from its run config's ``evaluation`` block (the settings
    ``choose.py`` / ``train.py`` chose on its hold-out, their fg IoU and block counts), or
    ``None`` when it has none. The ensemble keeps these, so that ``choose.py`` compares the
    ensemble with its best member on the same hold-out (``validation_gain_over_best_member``).
    """
    block = config.get("evaluation")
    if not isinstance(block, Mapping) or block.get("validation_fg_iou") is None:
        return None
    keys = ("validation_fg_iou", "validation_blocks", "inference", "postprocess", "threshold")
    return {key: _plain(block.get(key)) for key in keys}


def write_ensemble(members: Sequence[str | Path], output: str | Path) -> Path:
    """Write one checkpoint that averages the foreground probabilities of ``members``.

    Args:
        members: two or more emseg checkpoints (or training run directories: their best
            checkpoint) with the same preprocessing and validation hold-out.
        output: the new ``.ckpt`` (must not exist; written atomically).

    Returns:
        ``output``. Its ``emseg_config`` is the first member's, without its ``evaluation``
        block (settings chosen for one member; ``choose.py`` chooses the ensemble's), with
        ``model`` naming :func:`build_ensemble`, ``ensemble.members`` the source paths and
        ``ensemble.member_validation`` their validation records (:func:`member_validation`).

    Raises:
        ConfigError: fewer than two members, a member that is an ensemble, members that differ
            in preprocessing or hold-out, or an ``output`` that exists.
        CheckpointError: a member that is missing or not an emseg checkpoint.
    """
    if isinstance(members, str | Path) or len(members) < 2:
        raise ConfigError(f"members: an ensemble needs at least two checkpoints; got {members!r}")
    target = new_checkpoint_path(output, "ensemble.py")
    loaded = [_member(path) for path in members]
    sources = [source for source, _, _ in loaded]
    configs = [config for _, config, _ in loaded]
    _check_compatible(sources, configs)
    state: dict[str, torch.Tensor] = {}
    for index, (_, _, member_state) in enumerate(loaded):
        for key, value in member_state.items():
            state[f"{_NET_PREFIX}members.{index}.{key}"] = value
    config = copy.deepcopy(configs[0])
    config.pop("evaluation", None)
    config["model"] = {
        "_target_": ENSEMBLE_TARGET,
        "_recursive_": False,
        "members": [copy.deepcopy(dict(c["model"])) for c in configs],
    }
    config["ensemble"] = {
        "members": [str(source) for source in sources],
        "combine": "mean of the members' foreground probabilities",
        "member_validation": [member_validation(c) for c in configs],
    }
    with atomic_path(target) as tmp:
        torch.save({"state_dict": state, "emseg_config": config}, tmp)
    log.info("ensemble of %d members written to %s", len(sources), target)
    return target


def run(cfg: DictConfig) -> Path:
    """``ensemble.py``: :func:`write_ensemble` of ``cfg.members`` into ``cfg.output_ckpt``."""
    members = _plain(cfg.members)
    if not isinstance(members, list):
        raise ConfigError(
            f"members: a list of checkpoints, e.g. 'members=[a.ckpt,b.ckpt]'; got {members!r}"
        )
    return write_ensemble(members, cfg.output_ckpt)
