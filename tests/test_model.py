"""Model construction and encoder weight loading (ImageNet via smp's hub, or a local file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from emseg.errors import WeightsError
from emseg.model import build_unet, load_encoder_state_dict
from emseg.resolvers import PROJECT_ROOT


@pytest.fixture(scope="module")
def torchvision_vgg16_file(tmp_path_factory):
    """A file shaped like torchvision's vgg16-397923af.pth (features + a classifier key)."""
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    state = {f"features.{k}": v for k, v in features.items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored by the loader
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path, state


def test_random_init_builds_one_channel_unet():
    net = build_unet(encoder_weights=None, in_channels=1)
    assert net.encoder.features[0].weight.shape == (64, 1, 3, 3)
    assert net(torch.zeros(1, 1, 64, 96)).shape == (1, 1, 64, 96)


def test_torchvision_file_loads_and_first_conv_is_rgb_sum(torchvision_vgg16_file):
    path, state = torchvision_vgg16_file
    net = build_unet(encoder_weights=str(path), in_channels=1)
    expected = state["features.0.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(net.encoder.features[0].weight.detach(), expected)
    assert torch.equal(net.encoder.features[28].weight.detach(), state["features.28.weight"])


def test_smp_encoder_and_model_state_dicts_load(tmp_path, torchvision_vgg16_file):
    _, state = torchvision_vgg16_file
    source = build_unet(encoder_weights=None, in_channels=3)
    source.encoder.load_state_dict({k: v for k, v in state.items() if k.startswith("features")})
    encoder_file, model_file = tmp_path / "encoder.pth", tmp_path / "model.pth"
    torch.save(source.encoder.state_dict(), encoder_file)
    torch.save({"state_dict": source.state_dict()}, model_file)
    for path in (encoder_file, model_file):
        net = build_unet(encoder_weights=str(path), in_channels=3)
        assert torch.equal(net.encoder.features[2].weight, state["features.2.weight"])


def test_multi_channel_input_keeps_pretrained_filters(torchvision_vgg16_file):
    path, state = torchvision_vgg16_file
    net = build_unet(encoder_weights=str(path), in_channels=5)
    weight = net.encoder.features[0].weight.detach()
    assert weight.shape == (64, 5, 3, 3)
    rgb = state["features.0.weight"]
    assert torch.allclose(weight[:, 3], rgb[:, 0] * 3 / 5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is not a file"),
        (b"not a checkpoint", "cannot read"),
        ({"foo.weight": torch.zeros(1)}, "no encoder weights"),
        ({"features.0.weight": torch.zeros(2, 2)}, "does not fit"),
    ],
)
def test_bad_weight_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        build_unet(encoder_weights=str(path))


def test_load_encoder_state_dict_strips_prefixes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"encoder.features.0.weight": torch.ones(1), "decoder.x": torch.ones(1)}, path)
    assert list(load_encoder_state_dict(path)) == ["features.0.weight"]


def test_imagenet_offline_fails_fast_with_instructions():
    code = "from emseg.model import build_unet\nbuild_unet(encoder_weights='imagenet')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(PROJECT_ROOT / ".no-hf-cache")}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert time.perf_counter() - start < 60
    assert result.returncode != 0
    assert "WeightsError" in result.stderr
    assert "model.encoder_weights=null" in result.stderr


def test_a_torchvision_resnet18_file_fills_a_resnet18_encoder(tmp_path):
    """model=unet_resnet18 with a local file: torchvision's names, its classifier left out."""
    source = build_unet(encoder_name="resnet18", encoder_weights=None, in_channels=3)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v + 1
        for k, v in source.encoder.state_dict().items()
    }
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    net = build_unet(encoder_name="resnet18", encoder_weights=str(path), in_channels=3)
    assert torch.equal(net.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(net.encoder.conv1.weight, state["conv1.weight"])
    vgg = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, vgg)  # another encoder's file
    with pytest.raises(WeightsError, match="no encoder weights"):
        build_unet(encoder_name="resnet18", encoder_weights=str(vgg))
