"""Training works for every loss x optimizer and learns an easy synthetic task."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from omegaconf import OmegaConf

from emseg.train import build, run

LOSSES = ["bce", "dice", "focal", "bce_dice"]
OPTIMS = ["adam", "adagrad", "sgd"]


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


# Every loss and every optimizer in the fast suite; the rest of the cross product under -m slow.
FAST_PAIRS = {("bce", "adam"), ("dice", "adagrad"), ("focal", "sgd"), ("bce_dice", "adam")}
PAIRS = [
    pytest.param(loss, optim, marks=() if (loss, optim) in FAST_PAIRS else pytest.mark.slow)
    for loss, optim in itertools.product(LOSSES, OPTIMS)
]


@pytest.mark.parametrize(("loss", "optim"), PAIRS)
def test_loss_decreases_on_an_easy_task(tiny_cfg, loss, optim):
    L.seed_everything(0)
    lr = {"adam": 1e-3, "adagrad": 1e-2, "sgd": 1e-2}[optim]
    cfg = tiny_cfg(
        f"loss={loss}",
        f"optim={optim}",
        f"optim.lr={lr}",
        "callbacks=none",
        "logger=none",
        "trainer.max_epochs=8",
        "trainer.overfit_batches=1",
        "trainer.limit_val_batches=0",
        "data.train_transform=null",
        "data.fg_fraction=1.0",
    )
    datamodule, module, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    losses = recorder.losses
    assert len(losses) == 8
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses


def test_l2_last_two_penalises_only_the_final_two_convs(tiny_cfg):
    cfg = tiny_cfg("module.l2_last_two=1e-3")
    _, module, _ = build(cfg)
    optimizer = module.configure_optimizers()
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.0, 1e-3]
    penalised = {id(p) for p in groups[1]["params"]}
    names = [n for n, p in module.net.named_parameters() if id(p) in penalised]
    assert names == ["decoder.blocks.4.conv2.0.weight", "segmentation_head.0.weight"]


def test_max_time_is_enforced_by_the_runs_one_timer(tiny_cfg):
    """trainer.max_time goes to the one Timer emseg adds (Lightning would ignore its own
    max_time beside it); a spent budget stops the run before its first step."""
    _, _, trainer = build(tiny_cfg("trainer.max_time='00:00:02:00'"))
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer.time_remaining() == pytest.approx(120.0)
    cfg = tiny_cfg("trainer.max_time='00:00:00:00'", "trainer.max_epochs=3", "test_after_fit=false")
    metrics = run(cfg)
    assert metrics["global_step"] == 0  # 6 steps without the limit


def test_run_writes_metrics_checkpoints_and_events(tiny_cfg):
    cfg = tiny_cfg()
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    for key in ("val/fg_iou", "val/mean_iou", "val/dice", "val/acc", "test/fg_iou", "train/loss"):
        assert key in metrics and key in summary["metrics"]
        assert 0.0 <= metrics[key] or key.endswith("loss")
    assert summary["hparams"]["loss"] and summary["hparams"]["lr"] == pytest.approx(1e-4)
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    # the file name template renders {epoch:03d} and the interpolated ${module.monitor}
    best_name = f"best-epoch000-fg_iou{summary['metrics']['val/best_fg_iou']:.4f}.ckpt"
    assert "last.ckpt" in ckpts and best_name in ckpts, ckpts
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").exists()
    environment = json.loads((out / "environment.json").read_text())
    assert environment["command"] and len(environment["git_commit"]) in (40, 7)  # 7: "unknown"
    assert environment["packages"]["torch"] == torch.__version__
    assert {"git_dirty", "python", "hardware"} <= environment.keys()
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["emseg_config"]["model"] == OmegaConf.to_container(cfg.model, resolve=True)


def test_ema_run_checkpoints_the_averaged_weights_and_tests_them(tiny_cfg):
    """With callbacks=ema the best checkpoint's state_dict (what eval.py loads) is the average,
    the raw weights travel beside it for resume, and the after-fit test uses the average."""
    cfg = tiny_cfg("callbacks=ema", "callbacks.ema.decay=0.5", "trainer.max_epochs=2")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/fg_iou"] <= 1.0
    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    checkpoint = torch.load(best, weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    name = "net.segmentation_head.0.weight"
    assert not torch.equal(averaged[name], raw[name])
