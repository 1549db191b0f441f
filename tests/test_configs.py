"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from emseg.inference.sliding_window import model_stride
from emseg.module import MONITOR, SegmentationModule
from emseg.resolvers import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert {"epfl", "lucchipp"} <= set(options("data"))
    assert {"bce", "dice", "focal", "bce_dice"} <= set(options("loss"))
    assert {"adam", "adagrad", "sgd"} <= set(options("optim"))
    assert {"none", "cosine", "plateau"} <= set(options("scheduler"))
    assert {"seed_report", "quick"} <= set(options("experiment"))


@pytest.mark.parametrize("name", options("loss"))
def test_loss_instantiates_and_is_finite(tiny_cfg, name):
    loss = instantiate(tiny_cfg(f"loss={name}").loss)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert torch.isfinite(loss(logits, target))


@pytest.mark.parametrize("name", options("optim"))
def test_optimizer_is_partial(tiny_cfg, name):
    factory = instantiate(tiny_cfg(f"optim={name}").optim)
    assert isinstance(factory, functools.partial)
    optimizer = factory(params=[torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, torch.optim.Optimizer)


# Passed to the module by emseg.train.build, not configured in conf/module.
BUILT_ARGUMENTS = {"net", "loss", "optimizer", "scheduler", "run_config"}


@pytest.mark.parametrize("name", options("module"))
def test_module_config_keys_are_the_constructor_arguments(tiny_cfg, name):
    node = tiny_cfg(f"module={name}").module
    assert node._target_ == "emseg.module.SegmentationModule"
    keys = {k for k in node if not k.startswith("_")}
    parameters = set(inspect.signature(SegmentationModule.__init__).parameters) - {"self"}
    assert keys == parameters - BUILT_ARGUMENTS
    assert not keys & BUILT_ARGUMENTS


def test_monitored_metric_is_named_once(tiny_cfg):
    """module.monitor is the one place; the checkpoint, its file name and the sweep follow it."""
    cfg = tiny_cfg("module.monitor=val/dice")
    checkpoint = cfg.callbacks.model_checkpoint
    assert checkpoint.monitor == cfg.optimized_metric == "val/dice"
    assert checkpoint.filename == "best-epoch{epoch:03d}-fg_iou{val/dice:.4f}"
    assert tiny_cfg().module.monitor == MONITOR
    assert tiny_cfg("hparams_search=optuna_fg_iou").optimized_metric == MONITOR
    raw = OmegaConf.to_yaml(tiny_cfg(), resolve=False)
    assert raw.count(MONITOR) == 1, raw


def test_adam_default_lr_is_the_reports(tiny_cfg):
    assert tiny_cfg().optim.lr == pytest.approx(1e-4)
    assert tiny_cfg().optim._target_ == "torch.optim.Adam"


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_instantiates(tiny_cfg, name):
    node = tiny_cfg(f"scheduler={name}", "trainer.max_epochs=3").scheduler
    if not node:
        assert name == "none"
        return
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    instantiate(node)(optimizer=optimizer)


@pytest.mark.parametrize("name", options("data"))
def test_data_instantiates(tiny_cfg, name, synthetic_data_dir):
    # The template (data=custom) names no files: the synthetic volume stands in for the user's.
    files = [
        f"data.{key}={synthetic_data_dir}/epfl/{stem}.tif"
        for key, stem in (("train_image", "training"), ("train_mask", "training_groundtruth"))
    ]
    cfg = tiny_cfg(f"data={name}", *(files if name == "custom" else []))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    image, mask = datamodule.train_set[0]
    assert image.shape == (datamodule.in_channels, 64, 64) and mask.shape == (1, 64, 64)


def test_lucchipp_uses_its_own_masks(tiny_cfg):
    cfg = tiny_cfg("data=lucchipp")
    assert "lucchipp/training_groundtruth.tif" in cfg.data.train_mask
    assert "epfl/training.tif" in cfg.data.train_image


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs_compose(tiny_cfg, name):
    cfg = tiny_cfg(f"trainer={name}")
    assert cfg.trainer.precision in {"32-true", "bf16-mixed", "16-mixed"}
    if name in {"default", "cpu"}:
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == 1


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(tiny_cfg, name):
    cfg = tiny_cfg(f"experiment={name}")
    assert cfg.trainer.max_epochs >= 1


def test_seed_report_is_the_reports_budget(tmp_path, synthetic_data_dir):
    from tests.conftest import compose_train

    cfg = compose_train(["experiment=seed_report"], tmp_path, synthetic_data_dir)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (25, 60)
    assert cfg.loss._target_ == "emseg.losses.MaskedBCEWithLogitsLoss"
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.encoder_name == "vgg16"


@pytest.mark.parametrize("name", options("debug"))
def test_debug_configs_compose(tmp_path, synthetic_data_dir, name):
    from tests.conftest import compose_train

    assert compose_train([f"debug={name}"], tmp_path, synthetic_data_dir).task_name == "debug"


def test_callbacks_and_logger_instantiate(tiny_cfg):
    cfg = tiny_cfg()
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert any(type(c).__name__ == "ModelCheckpoint" for c in callbacks)
    assert cfg.callbacks.model_checkpoint.monitor == MONITOR
    logger = instantiate(cfg.logger.tensorboard)
    assert type(logger).__name__ == "TensorBoardLogger"


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build_2d_and_2_5d_unets(tiny_cfg, name):
    """Every model builds offline (random init) for one input channel and for 2.5D input
    (data.context=1: three channels), the U-Nets with the output stride 32 the windows are
    sized by (model=conv, one convolution, takes any size)."""
    weights = [] if name == "conv" else ["model.encoder_weights=null"]
    node = tiny_cfg(f"model={name}", *weights).model
    for channels in (1, 3):
        net = instantiate(node, in_channels=channels).eval()
        assert model_stride(net) == (1 if name == "conv" else 32)
        with torch.no_grad():
            out = net(torch.zeros(1, channels, 64, 96))
        assert out.shape == (1, 1, 64, 96)


REPORT_ABLATIONS = [n for n in options("ablation") if not n.startswith("fast_")]
# experiment=fast's leave-one-out ablations: the config keys each may change (as prefixes).
FAST_ABLATIONS = {
    "fast_2d": ("data.context",),
    "fast_bce": ("loss.",),
    "fast_no_ema": ("callbacks.ema",),
    "fast_fg_half": ("data.fg_fraction",),
    "fast_seed_lr": ("optim.lr", "scheduler"),
}


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        return {
            k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): node}


def test_every_fast_ablation_is_listed():
    assert set(options("ablation")) - set(REPORT_ABLATIONS) == set(FAST_ABLATIONS)


@pytest.mark.parametrize("name", sorted(FAST_ABLATIONS))
def test_fast_ablations_remove_one_change_of_fast(tmp_path, synthetic_data_dir, name):
    from omegaconf import OmegaConf

    from tests.conftest import compose_train

    def compose(ablation):
        overrides = ["experiment=fast_short", f"ablation={ablation}"]
        return compose_train(overrides, tmp_path / "run", synthetic_data_dir)

    reference = _flat(OmegaConf.to_container(compose("baseline")))
    removed_cfg = compose(name)
    removed = _flat(OmegaConf.to_container(removed_cfg))
    changed = {
        key
        for key in set(reference) | set(removed)
        if reference.get(key) != removed.get(key) and not key.startswith("tags")
    }
    assert changed, f"ablation={name} changes nothing"
    assert all(key.startswith(FAST_ABLATIONS[name]) for key in changed), sorted(changed)
    instantiate(removed_cfg.loss)
    assert [instantiate(c) for c in removed_cfg.callbacks.values() if c is not None]


@pytest.mark.parametrize("name", REPORT_ABLATIONS)
def test_ablations_compose_and_differ_from_baseline_only_where_named(tiny_cfg, name):
    cfg = tiny_cfg(f"ablation={name}")
    changed = {
        "dice": cfg.loss._target_.endswith("DiceLoss"),
        "focal": cfg.loss._target_.endswith("FocalLoss"),
        "adagrad": cfg.optim._target_ == "torch.optim.Adagrad",
        "sgd": cfg.optim._target_ == "torch.optim.SGD",
        "l2": cfg.module.l2_last_two > 0,
    }
    assert [k for k, v in changed.items() if v] == ([] if name == "baseline" else [name])


@pytest.mark.parametrize(("name", "steps"), [("full", (25, 60)), ("cpu", (10, 32))])
def test_budgets(tmp_path, synthetic_data_dir, name, steps):
    from tests.conftest import compose_train

    cfg = compose_train([f"budget={name}"], tmp_path, synthetic_data_dir)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == steps


def test_ema_callbacks_are_the_defaults_plus_ema(tiny_cfg):
    default, ema = tiny_cfg().callbacks, tiny_cfg("callbacks=ema").callbacks
    assert set(ema) == set(default) | {"ema"}
    callback = instantiate(ema.ema)
    assert type(callback).__name__ == "EMAWeightAveraging"


def test_fast_experiment_is_what_its_record_claims(tmp_path, synthetic_data_dir):
    from tests.conftest import compose_train

    cfg = compose_train(["experiment=fast"], tmp_path, synthetic_data_dir)
    assert cfg.data.context == 1 and cfg.optim.lr == pytest.approx(3e-4)
    assert set(cfg.loss.losses) == {"bce", "dice"}
    assert cfg.scheduler._target_ == "emseg.schedulers.warmup_cosine"
    assert cfg.scheduler.max_epochs == cfg.trainer.max_epochs == 32
    assert "ema" in cfg.callbacks and cfg.callbacks.snapshots.every_n_epochs == 8
    assert cfg.trainer.max_time == "00:02:00:00"


def test_best_second_cosine_is_the_recorded_command(tmp_path, synthetic_data_dir):
    """The config equals the command line of its record, plus the wide search."""
    from tests.conftest import compose_train

    cfg = compose_train(["experiment=best_second_cosine"], tmp_path, synthetic_data_dir)
    recorded = compose_train(
        [
            "experiment=fast_1h_resnet18",
            "optim.lr=3.0e-4",
            "seed=7",
            "trainer.max_time=00:01:40:00",
            "settings_search=wide",
        ],
        tmp_path,
        synthetic_data_dir,
    )
    assert cfg.scheduler._target_ == "emseg.schedulers.WallClockWarmupCosine"
    assert cfg.choose_settings is True
    cfg.tags = recorded.tags = []
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(recorded)
