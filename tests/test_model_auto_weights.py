"""``model.encoder_weights=auto`` (what ``make train`` passes): ImageNet weights when they can be
had, else random initialisation with one warning, never a failed start."""

from __future__ import annotations

import logging

from emseg import model


def _never_called(*args: object) -> None:
    raise AssertionError("ImageNet weights loaded although unreachable")


def test_auto_without_reachable_weights_is_random_init_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(model, "imagenet_weights_reachable", lambda name: False)
    monkeypatch.setattr(model, "_load_imagenet", _never_called)
    with caplog.at_level(logging.WARNING, logger="emseg.model"):
        net = model.build_unet(encoder_name="vgg11", encoder_weights="auto", in_channels=1)
    assert net.encoder.features[0].in_channels == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "random initialisation" in warnings[0].getMessage()


def test_auto_with_reachable_weights_loads_imagenet(monkeypatch):
    loaded = []
    monkeypatch.setattr(model, "imagenet_weights_reachable", lambda name: True)
    monkeypatch.setattr(model, "_load_imagenet", lambda net, name: loaded.append(name))
    model.build_unet(encoder_name="vgg11", encoder_weights="auto", in_channels=1)
    assert loaded == ["vgg11"]
