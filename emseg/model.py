"""The segmentation network: segmentation-models-pytorch ``Unet`` with a VGG16 encoder.

``encoder_weights`` may be
* ``None``: random initialisation;
* ``"imagenet"``: smp's own loader (downloads from its hub, or uses the local HF cache);
* ``"auto"``: ``"imagenet"`` when those weights are reachable (cached, or the hub answers), else
  random initialisation with a warning: the report's ImageNet start where it can be had, and a
  run that still starts on an offline machine (``make train``);
* a path to a local state dict: torchvision's ``vgg16-397923af.pth``, an smp encoder state dict,
  or a full smp ``Unet`` state dict (keys prefixed ``encoder.``).

Pretrained weights are loaded into a 3-channel encoder and the first convolution is then
adapted by smp (``set_in_channels``): for one input channel the RGB filters are summed, for
2.5D input (2k+1 channels) they are cycled and rescaled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from emseg.errors import WeightsError

__all__ = ["build_unet", "load_encoder_state_dict"]

log = logging.getLogger(__name__)


def load_encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a VGG encoder state dict from a local file, keeping only the convolutional features.

    Accepts torchvision's VGG checkpoint (``features.*`` + ``classifier.*``), an smp encoder
    state dict (``features.*``) or a full smp model state dict (``encoder.features.*``), as a
    plain dict or wrapped in ``{"state_dict": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"model.encoder_weights: {path} is not a file. Use 'imagenet' (needs internet or a "
            "filled Hugging Face cache), null (random init), or the path of a VGG16 state dict "
            "such as torchvision's vgg16-397923af.pth"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"model.encoder_weights: cannot read {path} ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"model.encoder_weights: {path} does not hold a state dict")
    features: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("encoder.", "net.encoder.", ""):
            if key.startswith(prefix + "features."):
                features[key[len(prefix) :]] = value
                break
    if not features:
        raise WeightsError(
            f"model.encoder_weights: {path} has no VGG 'features.*' weights "
            f"(first keys: {list(state)[:3]})"
        )
    return features


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
        features = load_encoder_state_dict(encoder_weights)
        stripped = {k.removeprefix("features."): v for k, v in features.items()}
        try:
            model.encoder.features.load_state_dict(stripped, strict=True)
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
