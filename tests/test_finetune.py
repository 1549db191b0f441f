"""Fine-tuning (``init_from``): a new run that starts from an emseg checkpoint's weights only."""

from __future__ import annotations

import logging

import pytest
import torch

from emseg.errors import ConfigError, WeightsError
from emseg.inference.checkpoint import CheckpointError
from emseg.io.checkpoint import read_checkpoint
from emseg.model import load_init_checkpoint, reuse_checkpoint_data
from emseg.train import build
from emseg.train import run as run_train
from tests.conftest import TINY_OVERRIDES, compose_train, run_script

QUIET = ["logger=none", "test_after_fit=false", "callbacks.validation_images=null"]
QUIET += ["callbacks.lr_monitor=null"]


def _net_weights(path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(path)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def test_weights_before_the_first_step_are_the_checkpoints(tiny_cfg, tiny_checkpoint):
    """A run directory stands for its best checkpoint; every tensor of it, BN statistics too."""
    run_dir = tiny_checkpoint.parent.parent
    source = load_init_checkpoint(run_dir).path
    cfg = tiny_cfg(*QUIET, f"init_from={run_dir}", "data.mean=0.5", "data.context=1")
    _, module, _ = build(cfg)
    expected = _net_weights(source)
    actual = module.net.state_dict()
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    # Outside Hydra nothing is overridden: the checkpoint's normalisation and context are used.
    assert cfg.data.mean == pytest.approx(0.548) and cfg.data.context == 0


def test_step_epoch_and_optimizer_start_fresh(tmp_path, synthetic_data_dir, tiny_checkpoint):
    source = read_checkpoint(tiny_checkpoint, weights_only=False)
    assert source["global_step"] == 2
    overrides = [*TINY_OVERRIDES, *QUIET, "trainer.limit_train_batches=1"]
    cfg = compose_train([*overrides, f"init_from={tiny_checkpoint}"], tmp_path, synthetic_data_dir)
    metrics = run_train(cfg)
    tuned = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    # Resumed, the run would have had nothing left to do (epoch 0 of max_epochs=1 was done).
    assert metrics["global_step"] == 1 and tuned["global_step"] == 1 and tuned["epoch"] == 0
    steps = {float(s["step"]) for s in tuned["optimizer_states"][0]["state"].values()}
    assert steps == {1.0}
    assert tuned["emseg_config"]["init_from"] == str(tiny_checkpoint)


def test_context_mismatch_is_one_line(tmp_path, capsys, synthetic_data_dir, tiny_checkpoint):
    args = [*TINY_OVERRIDES, "logger=none", f"paths.data_dir={synthetic_data_dir}"]
    args += [f"init_from={tiny_checkpoint}", "data.context=1"]
    code, stderr = run_script("train.py", args, tmp_path, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0] == (
        f"error: init_from: {tiny_checkpoint} does not fit this run: the checkpoint has 1 input "
        "channel (data.context=0), this run 3 (data.context=1); drop the data.context override "
        "to reuse the checkpoint's"
    )


def test_architecture_mismatch(tiny_cfg, tiny_checkpoint):
    cfg = tiny_cfg(*QUIET, f"init_from={tiny_checkpoint}", "model=unet_vgg16")
    with pytest.raises(WeightsError) as caught:
        build(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"init_from: {tiny_checkpoint} does not fit this run: ")
    assert "the checkpoint has model.encoder_name=mobilenet_v2" in message
    assert "this run model.encoder_name=vgg16" in message


def test_classes_mismatch(tiny_cfg, tiny_checkpoint):
    cfg = tiny_cfg(*QUIET, f"init_from={tiny_checkpoint}", "model.classes=2")
    with pytest.raises(WeightsError, match=r"model\.classes=1, this run model\.classes=2"):
        build(cfg)


def test_missing_file_is_the_readers_error(tiny_cfg, tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CheckpointError, match=rf"^init_from: {missing}: file not found$"):
        build(tiny_cfg(*QUIET, f"init_from={missing}"))


def test_not_together_with_resume(tiny_cfg, tiny_checkpoint):
    cfg = tiny_cfg(*QUIET, f"init_from={tiny_checkpoint}", f"ckpt_path={tiny_checkpoint}")
    with pytest.raises(ConfigError, match="give one. ckpt_path resumes a run"):
        build(cfg)


def test_normalisation_reused_unless_overridden(tiny_cfg, tiny_checkpoint, caplog):
    source = load_init_checkpoint(tiny_checkpoint)
    cfg = tiny_cfg("data.mean=0.5", "data.std=0.2")
    with caplog.at_level(logging.WARNING, logger="emseg.model"):
        replaced = reuse_checkpoint_data(cfg.data, source, ["data=epfl", "data.std=0.2"])
    assert replaced == {"mean": pytest.approx(0.548)}
    assert cfg.data.mean == pytest.approx(0.548) and cfg.data.std == pytest.approx(0.2)
    text = caplog.text
    assert "using the checkpoint's data.mean=0.548 instead of this run's config" in text
    assert "give data.mean=0.5 on the command line" in text
    assert "the command line's data.std=0.2 differs from the checkpoint's data.std=0.119" in text
