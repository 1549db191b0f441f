"""Precision and layout are chosen from the hardware, and explicit values always win."""

from __future__ import annotations

import pytest

from emseg import hardware, resolvers


@pytest.fixture(autouse=True)
def _no_cache():
    hardware.cpu_has_native_bf16.cache_clear()
    yield
    hardware.cpu_has_native_bf16.cache_clear()


def test_cpu_with_native_bf16_gets_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.auto_precision("auto") == "bf16-mixed"
    assert hardware.auto_channels_last("bf16-mixed", "cpu") is True


def test_cpu_without_native_bf16_gets_fp32_and_no_channels_last(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.auto_precision("cpu") == "32-true"
    assert hardware.auto_channels_last("32-true", "cpu") is False


def _fake_cuda(monkeypatch, capability: tuple[int, int] | None, bf16: bool = True) -> None:
    """torch.cuda's capability queries as a GPU of ``capability`` (``None``: no GPU) answers
    them; ``bf16`` is what ``is_bf16_supported()`` says (True on Volta / Turing too, where
    bf16 is only emulated)."""
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    ("capability", "bf16", "expected"),
    [
        ((9, 0), True, "bf16-mixed"),  # Hopper (H100 / H200)
        ((8, 0), True, "bf16-mixed"),  # Ampere (A100)
        ((8, 6), False, "16-mixed"),  # a driver / build without bf16
        ((7, 5), True, "16-mixed"),  # Turing (T4): bf16 emulated, is_bf16_supported() True
        ((7, 0), True, "16-mixed"),  # Volta (V100)
    ],
)
def test_gpu_precision(monkeypatch, capability, bf16, expected):
    _fake_cuda(monkeypatch, capability, bf16)
    assert hardware.auto_precision("auto") == expected
    assert hardware.auto_precision("gpu") == expected
    assert hardware.auto_channels_last(expected, "auto") is True


def test_gpu_requested_without_a_visible_gpu_is_not_bf16(monkeypatch):
    _fake_cuda(monkeypatch, None)
    assert hardware.cuda_has_native_bf16() is False
    assert hardware.auto_precision("gpu") == "16-mixed"


@pytest.mark.parametrize(
    ("capability", "accelerator", "pinned"),
    [((9, 0), "auto", True), ((9, 0), "gpu", True), ((9, 0), "cpu", False), (None, "auto", False)],
)
def test_pin_memory_only_for_cuda_training(monkeypatch, capability, accelerator, pinned):
    _fake_cuda(monkeypatch, capability)
    assert hardware.auto_pin_memory(accelerator) is pinned
    assert resolvers._pin_memory("auto", accelerator) is pinned
    assert resolvers._pin_memory(False, accelerator) is False


def test_avx2_only_cpu_is_not_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.cpu_has_native_bf16() is False


def test_explicit_precision_wins():
    assert resolvers._precision("32-true", "auto") == "32-true"
    assert resolvers._precision("16-mixed", "gpu") == "16-mixed"


def test_describe_hardware_names_the_device():
    text = hardware.describe_hardware()
    assert "threads" in text or "CUDA" in text


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_train_config_auto_precision_and_layout_on_cuda(monkeypatch, tmp_path, bf16, expected):
    """What conf/train.yaml's ``auto`` precision and layout resolve to on a CUDA machine, with
    and without bf16 (CUDA mocked: this checks the rule and the config resolvers, not a GPU)."""
    from tests.conftest import compose_train

    _fake_cuda(monkeypatch, (9, 0) if bf16 else (7, 5))
    cfg = compose_train(["experiment=seed_report"], tmp_path, tmp_path)
    assert cfg.trainer.precision == expected
    assert resolvers._channels_last("auto", cfg.trainer.precision, cfg.trainer.accelerator)


def test_cpu_model_name_is_named():
    assert hardware.cpu_model_name().strip()
