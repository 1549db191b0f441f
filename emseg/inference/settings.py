"""Inference settings that travel with a model, as nnU-Net's chosen post-processing does.

Which border padding, test-time augmentation or 3D median filter suits a model is an empirical
question answered on its validation hold-out (``eval.py split=val``, ``make quality-val``). The
answer belongs to the model, not to whoever runs it later: a training config's ``evaluation`` block
(``evaluation.inference.*``, ``evaluation.postprocess.*``, ``evaluation.threshold``; see
conf/experiment/fast.yaml) is stored in every checkpoint, or the block that the settings search
(train.py after training, choose.py later; :mod:`emseg.settings_search`) chose on the run's own
validation hold-out, and ``eval.py`` / ``predict.py`` apply it on top of conf/inference and
conf/postprocess. What the command line sets explicitly always wins: a key (``inference.tta=none``)
replaces the checkpoint's value for that key (``postprocess.median_size`` and ``median_nm`` count as
one), a group choice (``inference=naive``) replaces the checkpoint's whole block for that group, and
``checkpoint_settings=false`` ignores the block altogether (how settings are compared from the plain
defaults).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from emseg.errors import ConfigError

__all__ = [
    "SETTING_GROUPS",
    "applicable_evaluation",
    "apply_checkpoint_settings",
    "command_line_overrides",
]

log = logging.getLogger(__name__)

SETTING_GROUPS = ("inference", "postprocess")
# Top-level keys of an eval / predict config that an evaluation block may set too.
SETTING_KEYS = ("threshold",)
# Keys that give one setting two ways: the command line setting either replaces both.
LINKED_KEYS = ({"postprocess.median_size", "postprocess.median_nm"},)


def command_line_overrides() -> list[str]:
    """This Hydra job's command-line overrides; none outside Hydra (a config built in code)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _explicit_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys and groups a Hydra command line sets (``inference.tta``, ``inference``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group for o in parsed}


def _flatten(block: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in block.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def applicable_evaluation(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``evaluation`` block a training run stores, or ``{}`` when it was chosen elsewhere.

    An experiment's block (``conf/experiment/fast.yaml``) was chosen on one dataset's
    validation hold-out and names it in ``evaluation.chosen_on`` (``train_image`` /
    ``train_mask``: the training data it was chosen for). A run that trains on other data
    must not carry those settings as if they had been chosen for it: the block is dropped
    (with a warning) and the run's own validation decides (``eval.py split=val``). A block
    without ``chosen_on`` is the user's own and kept.

    Args:
        run_config: the resolved training config (``data.train_image``, ``evaluation``).
    """
    block = dict(run_config.get("evaluation") or {})
    chosen_on = dict(block.get("chosen_on") or {})
    data = run_config.get("data") or {}
    if all(_same_file(path, data.get(key, "")) for key, path in chosen_on.items()):
        return block
    log.warning(
        "the experiment's evaluation settings were chosen on %s, but this run trains on %s: "
        "they are not stored in its checkpoints; choose this run's own on its validation "
        "hold-out (eval.py split=val ...)",
        " / ".join(map(str, chosen_on.values())),
        " / ".join(str(data.get(key)) for key in chosen_on),
    )
    return {}


def _same_file(a: Any, b: Any) -> bool:
    from pathlib import Path

    return Path(str(a)).resolve() == Path(str(b)).resolve()


def apply_checkpoint_settings(
    cfg: DictConfig, ckpt_config: Mapping[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """Write the checkpoint's ``evaluation`` settings into ``cfg`` unless the command line set them.

    Args:
        cfg: the composed eval / predict config (changed in place).
        ckpt_config: the checkpoint's training config (``Checkpoint.config``).
        overrides: the command line's Hydra overrides (``HydraConfig.get().overrides.task``).

    Returns:
        The settings applied, as ``{"inference.border_pad": 0, ...}`` (empty if none).

    Raises:
        ConfigError: the checkpoint names a setting that conf/inference or conf/postprocess
            does not have.
    """
    block = ckpt_config.get("evaluation") or {}
    if not cfg.get("checkpoint_settings", True) or not block:
        return {}
    explicit = _explicit_keys(overrides)
    for linked in LINKED_KEYS:
        if explicit & linked:
            explicit |= linked
    applied: dict[str, Any] = {}
    for key in SETTING_KEYS:
        if key in block and key not in explicit and key in cfg:
            OmegaConf.update(cfg, key, block[key], merge=False)
            applied[key] = block[key]
    for group in SETTING_GROUPS:
        # A config without the group (export.py has no post-processing) takes none of it.
        if group in explicit or not block.get(group) or cfg.get(group) is None:
            continue
        for key, value in _flatten(block[group], f"{group}.").items():
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(
                    f"the checkpoint's evaluation.{key} is not one of the {group} settings "
                    f"(see conf/{group}/default.yaml)"
                )
            if key not in explicit:
                OmegaConf.update(cfg, key, value, merge=False)
                applied[key] = value
    if applied:
        log.info(
            "applying the checkpoint's evaluation settings (chosen on %s): %s "
            "(checkpoint_settings=false ignores them; explicit overrides win)",
            block.get("chosen_by") or "validation",
            " ".join(f"{k}={v}" for k, v in applied.items()),
        )
    return applied
