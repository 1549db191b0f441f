"""The segmentation network: segmentation-models-pytorch ``Unet`` (VGG16 or ResNet-18 encoder).

``encoder_weights`` may be
* ``None``: random initialisation;
* ``"imagenet"``: smp's own loader (downloads from its hub, or uses the local HF cache);
* ``"auto"``: ``"imagenet"`` when those weights are reachable (cached, or the hub answers), else
  random initialisation with a warning: the report's ImageNet start where it can be had, and a
  run that still starts on an offline machine (``make train``);
* a path to a local state dict: torchvision's ``vgg16-397923af.pth`` (or ``resnet18-f37072fd.pth``
  for a ResNet-18 encoder), an smp encoder state dict, or a full smp ``Unet`` state dict (keys
  prefixed ``encoder.``).

Pretrained weights are loaded into a 3-channel encoder and the first convolution is then
adapted by smp (``set_in_channels``): for one input channel the RGB filters are summed, for
2.5D input (2k+1 channels) they are cycled and rescaled.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import segmentation_models_pytorch as smp
import torch
from omegaconf import DictConfig
from torch import nn

from emseg.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from emseg.inference.checkpoint import Checkpoint

__all__ = [
    "INIT_KEY",
    "build_net",
    "build_unet",
    "check_init_fits",
    "init_weights",
    "load_encoder_state_dict",
    "load_init_checkpoint",
    "prepare_fine_tuning",
    "reuse_checkpoint_data",
]

log = logging.getLogger(__name__)


def load_encoder_state_dict(
    path: str | Path, encoder_keys: Collection[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read an encoder state dict from a local file, keeping only the encoder's weights.

    Accepts a torchvision classification checkpoint (``vgg16-397923af.pth``: ``features.*`` +
    ``classifier.*``; ``resnet18-f37072fd.pth``: ``conv1.*``, ``layer1.*``... + ``fc.*``), an
    smp encoder state dict, or a full smp model state dict (``encoder.*``), as a plain dict or
    wrapped in ``{"state_dict": ...}``.

    Args:
        path: the file.
        encoder_keys: the state-dict keys of the encoder to fill (smp's encoders are
            torchvision's networks without their classifier, so the names agree); ``None`` =
            a VGG encoder's ``features.*``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"model.encoder_weights: {path} is not a file. Use 'imagenet' (needs internet or a "
            "filled Hugging Face cache), null (random init), or the path of the encoder's "
            "state dict such as torchvision's vgg16-397923af.pth"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"model.encoder_weights: cannot read {path} ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"model.encoder_weights: {path} does not hold a state dict")

    def wanted(key: str) -> bool:
        return key in encoder_keys if encoder_keys is not None else key.startswith("features.")

    encoder: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("net.encoder.", "encoder.", ""):
            if key.startswith(prefix) and wanted(key[len(prefix) :]):
                encoder[key[len(prefix) :]] = value
                break
    if not encoder:
        what = "VGG 'features.*'" if encoder_keys is None else "encoder"
        raise WeightsError(
            f"model.encoder_weights: {path} has no {what} weights (first keys: {list(state)[:3]})"
        )
    return encoder


def _load_imagenet(model: nn.Module, encoder_name: str) -> None:
    hint = (
        "Pass a local file (model.encoder_weights=/path/to/vgg16-397923af.pth) or train from "
        "scratch (model.encoder_weights=null)"
    )
    if not imagenet_weights_reachable(encoder_name):  # fail in seconds, not after retries
        raise WeightsError(
            f"model.encoder_weights=imagenet: ImageNet weights for {encoder_name} are not in the "
            f"Hugging Face cache and its hub is unreachable (offline). {hint}"
        )
    try:
        weights_model = smp.Unet(encoder_name=encoder_name, encoder_weights="imagenet", classes=1)
    except Exception as err:  # network, hub or cache errors all mean the same to the user
        raise WeightsError(
            f"model.encoder_weights=imagenet: could not fetch ImageNet weights for "
            f"{encoder_name} ({type(err).__name__}). {hint}"
        ) from err
    model.encoder.load_state_dict(weights_model.encoder.state_dict())


def build_unet(
    encoder_name: str = "vgg16",
    encoder_weights: str | None = None,
    in_channels: int = 1,
    classes: int = 1,
    decoder_use_norm: str | bool = "batchnorm",
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
) -> smp.Unet:
    """Build ``smp.Unet`` and load encoder weights.

    Args:
        encoder_name: smp encoder (the report uses ``vgg16``).
        encoder_weights: ``None``, ``"imagenet"``, ``"auto"`` or a local state-dict path (see
            the module docstring).
        in_channels: input channels (1 for 2D EM, 2k+1 for 2.5D).
        classes: output logits per pixel (1 for binary mitochondria).
        decoder_use_norm: decoder normalisation, e.g. ``"batchnorm"``, ``"groupnorm"``... (smp).
        decoder_channels: channels of the five decoder blocks.

    Returns:
        The model; ``forward`` maps ``(N, in_channels, H, W)`` float to ``(N, classes, H, W)``
        logits, with H and W multiples of 32.
    """
    if in_channels < 1 or classes < 1:
        raise WeightsError(f"in_channels and classes must be >= 1, got {in_channels}, {classes}")
    model = smp.Unet(
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=3,
        classes=classes,
        decoder_use_norm=decoder_use_norm,
        decoder_channels=tuple(decoder_channels),
    )
    if encoder_weights == "auto":
        encoder_weights = _auto_weights(encoder_name)
    pretrained = encoder_weights is not None
    if encoder_weights == "imagenet":
        _load_imagenet(model, encoder_name)
        log.info("encoder %s: ImageNet weights from smp's hub", encoder_name)
    elif pretrained:
        weights = load_encoder_state_dict(encoder_weights, set(model.encoder.state_dict()))
        try:
            model.encoder.load_state_dict(weights, strict=True)
        except RuntimeError as err:  # missing/unexpected keys or tensor shape mismatches
            detail = " ".join(str(err).split())[:300]
            raise WeightsError(
                f"model.encoder_weights: {encoder_weights} does not fit a {encoder_name} "
                f"encoder: {detail}"
            ) from err
        log.info("encoder %s: weights from %s", encoder_name, encoder_weights)
    model.encoder.set_in_channels(in_channels, pretrained=pretrained)
    return model


def _auto_weights(encoder_name: str) -> str | None:
    """``"imagenet"`` when smp's ImageNet weights for ``encoder_name`` can be loaded, else
    ``None`` (random initialisation), said in one warning."""
    if imagenet_weights_reachable(encoder_name):
        return "imagenet"
    log.warning(
        "model.encoder_weights=auto: ImageNet weights for %s are not in the Hugging Face cache "
        "and its hub is unreachable (offline): training from random initialisation",
        encoder_name,
    )
    return None


def imagenet_weights_reachable(encoder_name: str = "vgg16", timeout: float = 3.0) -> bool:
    """True if smp's ImageNet weights for ``encoder_name`` are cached or its hub answers.

    Decides ``encoder_weights="auto"`` (and fails ``"imagenet"`` fast) without waiting for the
    hub client's long network time-outs.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    settings = smp.encoders.encoders[encoder_name]["pretrained_settings"]["imagenet"]
    cached = try_to_load_from_cache(
        settings["repo_id"], "model.safetensors", revision=settings.get("revision")
    )
    if isinstance(cached, str):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


# --- Fine-tuning: a new run that starts from an emseg checkpoint's network weights -----------

INIT_KEY = "init_from"
# Data settings the checkpoint's network was trained with, reused unless the command line sets
# them (``data.context`` fixes the input channels; ``data.mean`` / ``data.std`` /
# ``data.percentiles`` its inputs).
_REUSED_DATA_KEYS = ("mean", "std", "context", "percentiles")
# Model keys that only say how a network is initialised, not what it is.
_INIT_ONLY_MODEL_KEYS = frozenset({"encoder_weights"})


def load_init_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint (file or training run directory) a fine-tuning run starts from.

    Read by :func:`emseg.inference.load_checkpoint` (the package's one reader, through
    :func:`emseg.io.read_checkpoint`); its errors name ``init_from`` instead of ``ckpt_path``.

    Raises:
        CheckpointError: missing, unreadable, or not written by emseg's ``train.py``.
    """
    from emseg.inference.checkpoint import CheckpointError, load_checkpoint
    from emseg.io.checkpoint import resolve_checkpoint_path

    try:
        return load_checkpoint(resolve_checkpoint_path(path, label=INIT_KEY))
    except CheckpointError as err:
        message = str(err).removeprefix("ckpt_path: ").removeprefix(f"{INIT_KEY}: ")
        raise CheckpointError(f"{INIT_KEY}: {message}") from err


def _explicit_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys (and groups) a Hydra command line sets, ``+``/``++`` prefixes removed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))}


def reuse_checkpoint_data(
    data_cfg: DictConfig, source: Checkpoint, overrides: Sequence[str]
) -> dict[str, Any]:
    """Write the checkpoint's ``data.mean`` / ``data.std`` / ``data.context`` /
    ``data.percentiles`` into ``data_cfg`` unless the command line sets them; warn where the
    two disagree.

    A data group choice (``data=mydata``) is the data to fine-tune on, not an override of the
    normalisation: only the keys themselves (``data.mean=0.5``) override.

    Args:
        data_cfg: the run's ``data`` config (changed in place).
        source: the checkpoint the run starts from.
        overrides: the command line's Hydra overrides (none outside Hydra).

    Returns:
        The values that replaced the run's config, as ``{"mean": 0.548, ...}``.
    """
    pre = source.preprocessing
    percentiles = None if pre.percentiles is None else list(pre.percentiles)
    trained = {"mean": pre.mean, "std": pre.std, "context": pre.context}
    trained["percentiles"] = percentiles
    explicit = _explicit_keys(overrides)
    replaced: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for key in _REUSED_DATA_KEYS:
        if key not in data_cfg or data_cfg[key] == trained[key]:
            continue
        if f"data.{key}" in explicit:
            if key != "context":  # a context mismatch is refused by check_init_fits
                kept[key] = data_cfg[key]
        else:
            replaced[key] = data_cfg[key]
            data_cfg[key] = trained[key]

    def settings(values: Mapping[str, Any]) -> str:
        return " ".join(f"data.{key}={values[key]}" for key in values)

    if replaced:
        log.warning(
            "%s: using the checkpoint's %s instead of this run's config (give %s on the "
            "command line to keep the config's)",
            INIT_KEY,
            settings({key: trained[key] for key in replaced}),
            settings(replaced),
        )
    if kept:
        log.warning(
            "%s: the command line's %s differs from the checkpoint's %s, which its network was "
            "trained with (drop the overrides to reuse the checkpoint's)",
            INIT_KEY,
            settings(kept),
            settings({key: trained[key] for key in kept}),
        )
    return {key: trained[key] for key in replaced}


def _architecture_differences(
    trained: Mapping[str, Any], run: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """``model.<key>=<value>`` of the checkpoint and of this run, for every architecture key
    set in both configs that differs (``encoder_weights`` only initialises, it is left out)."""
    keys = [k for k in trained if k in run and k not in _INIT_ONLY_MODEL_KEYS]
    differing = [k for k in keys if trained[k] != run[k]]
    return (
        [f"model.{k}={trained[k]}" for k in differing],
        [f"model.{k}={run[k]}" for k in differing],
    )


def _channels(count: int) -> str:
    return f"{count} input channel{'' if count == 1 else 's'}"


def check_init_fits(
    source: Checkpoint, model_cfg: Mapping[str, Any], in_channels: int, context: int
) -> None:
    """Refuse a checkpoint whose network is not the one this run builds, in one sentence.

    Args:
        source: the checkpoint the run starts from.
        model_cfg: this run's resolved ``model`` config.
        in_channels: this run's input channels (``2 * data.context + 1``).
        context: this run's ``data.context``.

    Raises:
        WeightsError: other input channels (2.5D context), model factory, encoder, decoder or
            number of classes, naming both values.
    """
    pre = source.preprocessing
    problem = ""
    if pre.in_channels != in_channels:
        problem = (
            f"the checkpoint has {_channels(pre.in_channels)} (data.context={pre.context}), "
            f"this run {in_channels} (data.context={context}); drop the data.context override "
            "to reuse the checkpoint's"
        )
    else:
        trained, run = _architecture_differences(source.config.get("model") or {}, model_cfg)
        if trained:
            problem = (
                f"the checkpoint has {', '.join(trained)}, this run {', '.join(run)}; fine-tune "
                "with the checkpoint's model settings"
            )
    if problem:
        raise WeightsError(f"{INIT_KEY}: {source.path} does not fit this run: {problem}")


def init_weights(net: nn.Module, source: Checkpoint) -> None:
    """Copy the checkpoint's network weights (and batch-norm statistics) into ``net``.

    Raises:
        WeightsError: the state dicts differ in keys or shapes (a model the config check of
            :func:`check_init_fits` could not tell apart).
    """
    try:
        net.load_state_dict(source.net.state_dict(), strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise WeightsError(
            f"{INIT_KEY}: {source.path} weights do not fit this run's network: {detail}"
        ) from err
    log.info(
        "%s: network weights from %s (optimizer, schedule and step start afresh)",
        INIT_KEY,
        source.path,
    )


def prepare_fine_tuning(
    cfg: DictConfig, overrides: Sequence[str] | None = None
) -> Checkpoint | None:
    """Load ``cfg.init_from`` and fit the run's config to it, before anything is built.

    The checkpoint's normalisation and context replace the run's unless ``overrides`` set
    them (:func:`reuse_checkpoint_data`); ``model.encoder_weights`` is set to null, since the
    whole network comes from the checkpoint. Changes ``cfg`` in place, so that the run's
    records and checkpoints hold what was used.

    Args:
        cfg: the composed training config (changed in place).
        overrides: the command line's Hydra overrides; ``None``: this Hydra job's.

    Returns:
        The checkpoint, or ``None`` without ``init_from``.

    Raises:
        ConfigError: ``init_from`` together with ``ckpt_path`` (which resumes a run).
        CheckpointError: see :func:`load_init_checkpoint`.
    """
    path = cfg.get(INIT_KEY)
    if path in (None, ""):
        return None
    if cfg.get("ckpt_path") not in (None, ""):
        raise ConfigError(
            f"{INIT_KEY}={path} and ckpt_path={cfg.ckpt_path}: give one. ckpt_path resumes a run "
            f"(weights, optimizer, epoch and step); {INIT_KEY} starts a new run from a "
            "checkpoint's weights only"
        )
    if overrides is None:
        from emseg.inference.settings import command_line_overrides

        overrides = command_line_overrides()
    source = load_init_checkpoint(path)
    reuse_checkpoint_data(cfg.data, source, overrides)
    if cfg.model.get("encoder_weights") is not None:
        log.info("%s: model.encoder_weights=%s not loaded", INIT_KEY, cfg.model.encoder_weights)
        cfg.model.encoder_weights = None
    return source


def build_conv(in_channels: int = 1, kernel_size: int = 3, classes: int = 1) -> nn.Module:
    """One convolution: a per-pixel linear classifier of each pixel's neighbourhood.

    The smallest network emseg can train and load (``model=conv``): a floor for throughput
    benchmarks of the blockwise engine and the I/O (experiments/large_volumes) and a smoke
    test of a pipeline, not a segmentation model. ``forward`` maps ``(N, in_channels, H, W)``
    to ``(N, classes, H, W)`` logits for any H and W (no stride).
    """
    if in_channels < 1 or classes < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise WeightsError(
            f"in_channels, classes >= 1 and an odd kernel_size, got {in_channels}, {classes}, "
            f"{kernel_size}"
        )
    return nn.Conv2d(in_channels, classes, kernel_size, padding=kernel_size // 2)


def build_net(cfg: DictConfig, in_channels: int, source: Checkpoint | None = None) -> nn.Module:
    """The run's network: ``cfg.model`` instantiated, with ``source``'s weights when fine-tuning.

    Args:
        cfg: the composed training config (after :func:`prepare_fine_tuning`).
        in_channels: the data module's input channels.
        source: the checkpoint of ``init_from``, or ``None``.

    Raises:
        WeightsError: ``source`` holds another network (:func:`check_init_fits`).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if source is not None:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        check_init_fits(source, model_cfg, in_channels, cfg.data.get("context", 0))
    net = instantiate(cfg.model, in_channels=in_channels)
    if source is not None:
        init_weights(net, source)
    return net
