"""eval.py and predict.py end to end on a tiny checkpoint trained in-process on synthetic data.

The command lines run as subprocesses where the interpreter matters (one per input kind and
one eval), and in-process through ``runpy`` (the same root script, same exit codes and stderr)
for the error cases, which keeps the whole file well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emseg.errors import ConfigError, DataError
from emseg.evaluate import METRIC_KEYS, _test_paths
from emseg.evaluate import run as run_eval
from emseg.inference import CheckpointError, VolumePredictor, load_checkpoint
from emseg.postprocess import median_filter_volume, remove_small_components
from emseg.predict import run as run_predict
from emseg.resolvers import PROJECT_ROOT
from tests.conftest import compose_cfg
from tests.conftest import run_script as run_in_process

QUIET = ["progress=false", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def run_script(script: str, args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """``python <script> <args> progress=false`` in this process: (exit code, stderr)."""
    return run_in_process(script, [*args, "progress=false"], tmp_path, capsys)


def run_cli(script: str, args: list[str], tmp_path: Path, **env: str):
    return subprocess.run(
        [sys.executable, script, *args, *QUIET, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def temporaries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tmp-*"))


def write_input(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    unit = rng.random(shape, dtype=np.float32)
    if np.dtype(dtype).kind == "f":
        data = unit.astype(dtype)
    else:
        data = (unit * np.iinfo(dtype).max).astype(dtype)
    tifffile.imwrite(path, data)
    return data


def expected_probabilities(checkpoint: Path, data: np.ndarray, median: int = 0) -> np.ndarray:
    ckpt = load_checkpoint(checkpoint)
    predictor = VolumePredictor(ckpt.net, ckpt.preprocessing)
    volume = data if data.ndim == 3 else data[None]
    probs = np.stack(list(predictor.predict(volume)))
    return median_filter_volume(probs, median) if median else probs


# --- checkpoint loading -------------------------------------------------------------------------


def test_checkpoint_carries_model_and_normalisation(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert (ckpt.preprocessing.context, ckpt.preprocessing.in_channels) == (0, 1)
    assert ckpt.preprocessing.mean == pytest.approx(0.548)
    assert ckpt.preprocessing.std == pytest.approx(0.119)
    assert not ckpt.net.training
    saved = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in ckpt.net.state_dict().items():
        torch.testing.assert_close(value, saved[f"net.{key}"])


def _save(path: Path, content) -> Path:
    torch.save(content, path)
    return path


def test_checkpoint_errors(tmp_path, tiny_checkpoint):
    good = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    config = good["emseg_config"]
    net_state = {k: v for k, v in good["state_dict"].items() if k.startswith("net.")}
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(256))
    (tmp_path / "truncated.ckpt").write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    partial = dict(list(net_state.items())[:-1])
    foreign = {**config, "model": {**config["model"], "_target_": "os.system"}}
    cases = {
        tmp_path / "missing.ckpt": "not found",
        tmp_path: "is a directory",
        tmp_path / "empty.ckpt": "file is empty",
        tmp_path / "garbage.ckpt": "not a readable PyTorch checkpoint",
        tmp_path / "truncated.ckpt": "not a readable PyTorch checkpoint",
        _save(tmp_path / "weights.pt", {"a": torch.ones(1)}): "no state_dict",
        _save(tmp_path / "noconfig.ckpt", {"state_dict": net_state}): "no emseg_config",
        _save(tmp_path / "nonet.ckpt", {"state_dict": {}, "emseg_config": config}): "no network",
        _save(tmp_path / "partial.ckpt", {"state_dict": partial, "emseg_config": config}): "fit",
        _save(
            tmp_path / "foreign.ckpt", {"state_dict": net_state, "emseg_config": foreign}
        ): "only emseg",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


# --- predict ------------------------------------------------------------------------------------


ROUND_TRIP = {"2d_uint8": ((40, 50), np.uint8), "3d_uint16": ((3, 40, 50), np.uint16)}
ROUND_TRIP["3d_float32"] = ((2, 40, 50), np.float32)


def test_predict_cli_round_trip(tmp_path, tiny_checkpoint):
    """One command segments three inputs (a Hydra multirun: one process, one job each)."""
    inputs = {
        name: write_input(tmp_path / f"{name}.tif", *spec) for name, spec in ROUND_TRIP.items()
    }
    args = ["-m", f"ckpt_path={tiny_checkpoint}"]
    args += ["input=" + ",".join(str(tmp_path / f"{name}.tif") for name in inputs)]
    args += ["output=${input}.probs.tif", "mask_output=${input}.mask.tif"]
    args += [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = run_cli("predict.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, data in inputs.items():
        probs = tifffile.imread(tmp_path / f"{name}.tif.probs.tif")
        mask = tifffile.imread(tmp_path / f"{name}.tif.mask.tif")
        assert probs.shape == mask.shape == data.shape, name
        assert probs.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        expected = expected_probabilities(tiny_checkpoint, data).reshape(data.shape)
        assert np.abs(probs.astype(int) - np.rint(expected * 255)).max() <= 2  # bf16 / threads
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((40, 50), np.uint16), ((40, 50), np.float32), ((1, 40, 50), np.uint8)],
)
def test_predict_keeps_shape_for_every_dtype(tmp_path, tiny_checkpoint, shape, dtype):
    write_input(tmp_path / "in.tif", shape, dtype)
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={tiny_checkpoint}",
            f"input={tmp_path / 'in.tif'}",
            f"output={tmp_path / 'probs.tif'}",
            "output_dtype=float16",
        ],
        tmp_path,
    )
    run_predict(cfg)
    probs = tifffile.imread(tmp_path / "probs.tif")
    assert probs.shape == shape and probs.dtype == np.float16
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert temporaries(tmp_path) == []


def test_predict_postprocessing_matches_the_volume_functions(tmp_path, tiny_checkpoint):
    data = write_input(tmp_path / "in.tif", (4, 40, 50), np.uint8)
    overrides = [
        f"ckpt_path={tiny_checkpoint}",
        f"input={tmp_path / 'in.tif'}",
        f"output={tmp_path / 'probs.tif'}",
        f"mask_output={tmp_path / 'mask.tif'}",
        "postprocess.median_size=3",
        "postprocess.min_size=20",
    ]
    run_predict(compose_cfg("predict", overrides, tmp_path))
    probs = expected_probabilities(tiny_checkpoint, data, median=3)
    expected = remove_small_components(probs > 0.5, 20) * 255
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mask.tif"), expected)
    assert temporaries(tmp_path) == []


def test_min_size_needs_a_mask_output(tmp_path, tiny_checkpoint):
    write_input(tmp_path / "in.tif", (40, 50), np.uint8)
    overrides = [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'in.tif'}"]
    overrides += [f"output={tmp_path / 'p.tif'}", "postprocess.min_size=5"]
    with pytest.raises(ConfigError, match="mask_output"):
        run_predict(compose_cfg("predict", overrides, tmp_path))


def test_a_failure_mid_volume_leaves_no_file(tmp_path, tiny_checkpoint):
    data = write_input(tmp_path / "in.tif", (4, 40, 50), np.float32)
    data[2, 5, 5] = np.nan  # slice 2 cannot be read: slices 0-1 are already written
    tifffile.imwrite(tmp_path / "in.tif", data)
    overrides = [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'in.tif'}"]
    overrides += [f"output={tmp_path / 'p.tif'}", f"mask_output={tmp_path / 'm.tif'}"]
    with pytest.raises(DataError, match="slice 2 contains NaN"):
        run_predict(compose_cfg("predict", overrides, tmp_path))
    assert not (tmp_path / "p.tif").exists() and not (tmp_path / "m.tif").exists()
    assert temporaries(tmp_path) == []


def test_predict_refuses_to_overwrite(tmp_path, tiny_checkpoint, capsys):
    write_input(tmp_path / "in.tif", (40, 50), np.uint8)
    output = tmp_path / "probs.tif"
    args = [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'in.tif'}", f"output={output}"]
    assert run_script("predict.py", args, tmp_path, capsys)[0] == 0
    output.write_bytes(b"keep me")
    code, err = run_script("predict.py", args, tmp_path, capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: output: {output} already exists; pass overwrite=true to replace it"
    ]
    assert output.read_bytes() == b"keep me"
    assert run_script("predict.py", [*args, "overwrite=true"], tmp_path, capsys)[0] == 0
    assert tifffile.imread(output).shape == (40, 50)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing ckpt", "ckpt_path: .*missing.ckpt: file not found"),
        ("corrupt ckpt", "ckpt_path: .*corrupt.ckpt is not a readable PyTorch checkpoint"),
        ("missing input", "missing.tif: file not found"),
        ("output dir missing", "output: directory .*nowhere does not exist"),
    ],
)
def test_bad_inputs_give_one_error_line_and_exit_code_2(
    tmp_path, tiny_checkpoint, capsys, case, message
):
    write_input(tmp_path / "in.tif", (40, 50), np.uint8)
    (tmp_path / "corrupt.ckpt").write_bytes(os.urandom(1000))
    paths = {
        "ckpt_path": tiny_checkpoint,
        "input": tmp_path / "in.tif",
        "output": tmp_path / "out.tif",
    }
    key, value = {
        "missing ckpt": ("ckpt_path", tmp_path / "missing.ckpt"),
        "corrupt ckpt": ("ckpt_path", tmp_path / "corrupt.ckpt"),
        "missing input": ("input", tmp_path / "missing.tif"),
        "output dir missing": ("output", tmp_path / "nowhere" / "out.tif"),
    }[case]
    paths[key] = value
    code, err = run_script("predict.py", [f"{k}={v}" for k, v in paths.items()], tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.tif").exists() and temporaries(tmp_path) == []


def test_bad_checkpoint_from_the_real_command_line(tmp_path):
    (tmp_path / "corrupt.ckpt").write_bytes(os.urandom(1000))
    write_input(tmp_path / "in.tif", (40, 50), np.uint8)
    args = [f"ckpt_path={tmp_path / 'corrupt.ckpt'}", f"input={tmp_path / 'in.tif'}"]
    result = run_cli("predict.py", [*args, f"output={tmp_path / 'o.tif'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: ckpt_path: {tmp_path / 'corrupt.ckpt'} is not a readable PyTorch checkpoint "
        "(corrupt, or holds objects other than tensors and plain data)"
    ]


# --- eval ---------------------------------------------------------------------------------------


def test_eval_cli_writes_metrics_json(tmp_path, tiny_checkpoint, synthetic_data_dir):
    out = tmp_path / "hydra"
    args = [f"ckpt_path={tiny_checkpoint}", "data=epfl", "limit_slices=3"]
    result = run_cli("eval.py", args, tmp_path, EMSEG_DATA_DIR=str(synthetic_data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    metrics = summary["metrics"]
    assert set(METRIC_KEYS) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRIC_KEYS), metrics
    assert summary["slices"] == 3
    assert summary["test_image"] == str(synthetic_data_dir / "epfl" / "testing.tif")
    assert "fg_iou (metric of record)" in result.stdout


def test_eval_options_in_process(tmp_path, tiny_checkpoint, synthetic_data_dir):
    overrides = [
        f"ckpt_path={tiny_checkpoint}",
        f"paths.data_dir={synthetic_data_dir}",
        "data=lucchipp",
        "inference=naive",
        "inference.tile_size=32",
        "inference.tta=flips",
        "postprocess.min_size=4",
        "postprocess.median_size=3",
        "save_predictions=true",
        "limit_slices=2",
        "edge_band=8",
    ]
    metrics = run_eval(compose_cfg("eval", overrides, tmp_path))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"] == pytest.approx(metrics)
    assert summary["inference"]["mode"] == "naive" and summary["inference"]["tta"] == "flips"
    assert summary["test_mask"].endswith("lucchipp/testing_groundtruth.tif")
    predictions = tifffile.imread(tmp_path / "predictions.tif")
    assert predictions.shape == (2, 96, 96) and predictions.dtype == np.uint8
    assert temporaries(tmp_path) == []


def test_eval_defaults_to_the_checkpoints_test_volume(tmp_path, monkeypatch, synthetic_data_dir):
    import emseg.evaluate as evaluate

    cfg = compose_cfg("eval", ["ckpt_path=x", f"paths.data_dir={tmp_path}"], tmp_path)
    ckpt_config = {
        "data": {
            "test_image": str(synthetic_data_dir / "epfl" / "testing.tif"),
            "test_mask": str(synthetic_data_dir / "lucchipp" / "testing_groundtruth.tif"),
        }
    }
    configured = (tmp_path / "epfl" / "testing.tif", tmp_path / "epfl" / "testing_groundtruth.tif")
    assert _test_paths(cfg, ckpt_config) == configured  # outside Hydra: the composed data
    monkeypatch.setattr(evaluate, "_data_overridden", lambda: False)
    trained = tuple(Path(p) for p in ckpt_config["data"].values())
    assert _test_paths(cfg, ckpt_config) == trained
    ckpt_config["data"]["test_image"] = str(tmp_path / "moved.tif")
    assert _test_paths(cfg, ckpt_config) == configured  # files gone: the data group


def test_eval_split_val_scores_the_checkpoints_holdout(
    tmp_path, tiny_checkpoint, synthetic_data_dir
):
    """split=val evaluates the last data.val_slices training slices, never the test volume."""
    overrides = [f"ckpt_path={tiny_checkpoint}", "split=val", "save_predictions=true"]
    run_eval(compose_cfg("eval", overrides, tmp_path))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    config = torch.load(tiny_checkpoint, weights_only=False)["emseg_config"]["data"]
    assert summary["split"] == "val" and summary["test_mask"] == config["train_mask"]
    assert summary["slices"] == config["val_slices"] == 2
    mask = tifffile.imread(config["train_mask"])
    counts = summary["counts"]["all"]
    assert counts["tp"] + counts["fn"] == int((mask[-2:] > 0).sum())
    assert tifffile.imread(tmp_path / "predictions.tif").shape == (2, *mask.shape[1:])


def test_eval_scores_extra_masks_from_the_same_predictions(
    tmp_path, tiny_checkpoint, synthetic_data_dir
):
    data = synthetic_data_dir
    same = data / "epfl" / "testing_groundtruth.tif"
    other = data / "lucchipp" / "testing_groundtruth.tif"
    overrides = [
        f"ckpt_path={tiny_checkpoint}",
        f"paths.data_dir={data}",
        "limit_slices=3",
        f"+extra_masks.same={same}",
        f"+extra_masks.lucchipp={other}",
    ]
    metrics = run_eval(compose_cfg("eval", overrides, tmp_path))
    extra = json.loads((tmp_path / "metrics.json").read_text())["extra_masks"]
    assert extra["same"]["metrics"] == pytest.approx(metrics)
    mask = tifffile.imread(other)[:3] > 0
    counts = extra["lucchipp"]["counts"]["all"]
    assert counts["tp"] + counts["fn"] == int(mask.sum())
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DataError, match="extra_masks.wrong"):
        run_eval(compose_cfg("eval", [*overrides[:3], f"+extra_masks.wrong={wrong}"], tmp_path))
    with pytest.raises(ConfigError, match="split=test"):
        run_eval(compose_cfg("eval", [*overrides, "split=val"], tmp_path))
