"""The network of an emseg bioimage.io package, buildable without emseg.

This file is copied verbatim into every package that ``export.py format=bioimageio`` writes
(its ``pytorch_state_dict`` weights name it as their architecture source), so it imports
nothing but ``segmentation_models_pytorch``. It builds the network exactly as
:func:`emseg.model.build_unet` does with ``encoder_weights=None`` (an smp ``Unet`` made for 3
input channels, then its first convolution replaced for ``in_channels``), so the exported state
dict loads into it strictly (``tests/test_zoo.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp


def build_unet(
    encoder_name: str = "vgg16",
    in_channels: int = 1,
    classes: int = 1,
    decoder_use_norm: str | bool = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> smp.Unet:
    """An untrained smp ``Unet`` with emseg's layout (the package's weights are loaded after).

    Args:
        encoder_name: smp encoder, e.g. ``vgg16``.
        in_channels: input channels: ``2 * context + 1`` consecutive z slices (2.5D).
        classes: output logits per pixel (1: mitochondria).
        decoder_use_norm: decoder normalisation (smp's ``decoder_use_norm``).
        decoder_channels: channels of the five decoder blocks.

    Returns:
        A module mapping float32 ``(N, in_channels, Y, X)``, Y and X multiples of 32, to
        ``(N, classes, Y, X)`` logits.
    """
    model = smp.Unet(
        encoder_name=encoder_name,
        encoder_weights=None,
        in_channels=3,
        classes=classes,
        decoder_use_norm=decoder_use_norm,
        decoder_channels=tuple(decoder_channels),
    )
    model.encoder.set_in_channels(in_channels, pretrained=False)
    return model
