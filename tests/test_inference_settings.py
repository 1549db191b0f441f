"""Inference settings stored with a model (the training config's ``evaluation`` block)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from emseg.errors import ConfigError
from emseg.inference.settings import apply_checkpoint_settings
from tests.conftest import CONFIG_DIR
from tests.conftest import run_script as run_in_process

BLOCK = {"evaluation": {"inference": {"tta": "flips", "border_pad": 0}, "postprocess": {}}}


def _eval_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=["ckpt_path=x", *overrides])


def test_checkpoint_settings_apply_beneath_explicit_overrides():
    cfg = _eval_cfg(["inference.tta=d4"])
    applied = apply_checkpoint_settings(cfg, BLOCK, ["ckpt_path=x", "inference.tta=d4"])
    assert applied == {"inference.border_pad": 0}
    assert cfg.inference.tta == "d4" and cfg.inference.border_pad == 0


def test_a_group_choice_or_checkpoint_settings_false_ignores_the_block():
    cfg = _eval_cfg(["inference=naive"])
    assert apply_checkpoint_settings(cfg, BLOCK, ["inference=naive"]) == {}
    assert cfg.inference.border_pad == 0 and cfg.inference.tta == "none"  # naive's own values
    cfg = _eval_cfg(["checkpoint_settings=false"])
    assert apply_checkpoint_settings(cfg, BLOCK, ["checkpoint_settings=false"]) == {}
    assert cfg.inference.tta == "none" and cfg.inference.border_pad == 32
    assert apply_checkpoint_settings(_eval_cfg([]), {"evaluation": {}}, []) == {}
    assert apply_checkpoint_settings(_eval_cfg([]), {}, []) == {}


def test_an_unknown_setting_in_the_checkpoint_is_one_clear_error():
    block = {"evaluation": {"postprocess": {"median": 3}}}
    with pytest.raises(ConfigError, match=r"evaluation\.postprocess\.median is not one of"):
        apply_checkpoint_settings(_eval_cfg([]), block, [])


@pytest.mark.parametrize("experiment", ["fast", "best"])
def test_the_experiments_blocks_name_real_settings(experiment):
    """A typo in conf/experiment/<name>.yaml's evaluation block fails here, not after training."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        train = compose(config_name="train", overrides=[f"experiment={experiment}"])
    block = OmegaConf.to_container(train, resolve=False)
    applied = apply_checkpoint_settings(_eval_cfg([]), block, [])
    assert applied and all(k.split(".")[0] in ("inference", "postprocess") for k in applied)


def _with_settings(checkpoint_path: Path, tmp_path: Path, border_pad: int) -> Path:
    """A copy of the checkpoint whose training config carries an evaluation block."""
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    checkpoint["emseg_config"]["evaluation"] = {
        "inference": {"tta": "flips", "border_pad": border_pad},
        "postprocess": {"median_size": 3},
    }
    path = tmp_path / "with_settings.ckpt"
    torch.save(checkpoint, path)
    return path


def test_eval_cli_applies_the_checkpoints_settings(tmp_path, tiny_checkpoint, capsys):
    path = _with_settings(tiny_checkpoint, tmp_path, border_pad=8)
    args = [f"ckpt_path={path}", "limit_slices=2", "inference.border_pad=4", "progress=false"]
    code, err = run_in_process("eval.py", args, tmp_path, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "hydra" / "metrics.json").read_text())
    assert summary["inference"]["tta"] == "flips" and summary["inference"]["border_pad"] == 4
    assert summary["postprocess"]["median_size"] == 3
    applied = {"inference.tta": "flips", "postprocess.median_size": 3}
    assert summary["checkpoint_settings"] == applied


def test_predict_cli_applies_the_checkpoints_settings(tmp_path, tiny_checkpoint, capsys):
    """predict.py with a settings-carrying checkpoint writes what the explicit overrides write."""
    path = _with_settings(tiny_checkpoint, tmp_path, border_pad=0)
    image = np.random.default_rng(0).integers(0, 256, (4, 40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image)

    def predict(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.tif"
        args = [f"ckpt_path={path}", f"input={tmp_path / 'in.tif'}", f"output={out}"]
        args += ["output_dtype=float16", "progress=false", *extra]
        code, err = run_in_process("predict.py", args, tmp_path, capsys)
        assert code == 0, err
        return tifffile.imread(out)

    from_checkpoint = predict("from_checkpoint")
    explicit = predict(
        "explicit",
        "checkpoint_settings=false",
        "inference.tta=flips",
        "inference.border_pad=0",
        "postprocess.median_size=3",
    )
    ignored = predict("ignored", "checkpoint_settings=false")
    np.testing.assert_array_equal(from_checkpoint, explicit)
    assert np.abs(from_checkpoint - ignored).max() > 1e-3  # the settings changed the output


def test_an_experiments_settings_stay_with_the_data_they_were_chosen_on(tmp_path, caplog):
    """experiment=fast's block names the EPFL training data: another dataset stores none of it."""
    import logging

    from emseg.inference.settings import applicable_evaluation
    from emseg.train import _run_config
    from tests.conftest import compose_train

    data_dir = tmp_path / "data"
    epfl = compose_train(["experiment=fast"], tmp_path / "a", data_dir)
    kept = _run_config(epfl)["evaluation"]
    assert kept["inference"] == {"border_pad": 0} and kept["postprocess"] == {"median_size": 7}
    other = compose_train(["experiment=fast", "data=lucchipp"], tmp_path / "b", data_dir)
    with caplog.at_level(logging.WARNING, logger="emseg.inference.settings"):
        assert _run_config(other)["evaluation"] == {}
    assert "chosen on" in caplog.text and "lucchipp" in caplog.text
    own = {"evaluation": {"inference": {"tta": "d4"}}, "data": {"train_image": "x.tif"}}
    assert applicable_evaluation(own) == {"inference": {"tta": "d4"}}  # no chosen_on: the user's
