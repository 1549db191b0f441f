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


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_gpu_precision(monkeypatch, bf16, expected):
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: bf16)
    assert hardware.auto_precision("auto") == expected
    assert hardware.auto_precision("gpu") == expected


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

    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: bf16)
    cfg = compose_train(["experiment=seed_report"], tmp_path, tmp_path)
    assert cfg.trainer.precision == expected
    assert resolvers._channels_last("auto", cfg.trainer.precision, cfg.trainer.accelerator)


def test_cpu_model_name_is_named():
    assert hardware.cpu_model_name().strip()
