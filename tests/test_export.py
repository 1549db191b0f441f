"""export.py: TorchScript and ONNX files that reproduce the checkpoint's network outside emseg."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from emseg.errors import ConfigError
from emseg.export import output_paths
from emseg.export import run as run_export
from emseg.inference import load_checkpoint
from tests.conftest import CONFIG_DIR
from tests.conftest import run_script as run_in_process

QUIET = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def export_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="export", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def run_script(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """``python export.py <args>`` in this process: (exit code, stderr)."""
    return run_in_process("export.py", args, tmp_path, capsys)


def run_file(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Run an exported file the way another tool would: torch.jit / onnxruntime alone."""
    if fmt == "torchscript":
        with torch.inference_mode():
            return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(("fmt", "atol"), [("torchscript", 1e-5), ("onnx", 1e-4)])
def test_exported_model_equals_checkpoint(tiny_checkpoint, tmp_path, fmt, atol):
    cfg = export_cfg([f"ckpt_path={tiny_checkpoint}", f"format={fmt}"], tmp_path)
    result = run_export(cfg)
    model_file, card_file = Path(result["model"]), Path(result["card"])
    suffix = {"torchscript": ".pt", "onnx": ".onnx"}[fmt]
    assert model_file == tmp_path / f"model{suffix}" and card_file == tmp_path / "model.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model_file.name, "model.json"])

    checkpoint = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 64, 96), (2, 1, 128, 32)]:  # the second: other batch, H and W
        x = rng.normal(size=shape).astype(np.float32)
        with torch.inference_mode():
            expected = checkpoint.net(torch.from_numpy(x)).numpy()
        got = run_file(model_file, fmt, x)
        assert got.shape == expected.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)

    card = json.loads(card_file.read_text())
    pre = checkpoint.preprocessing
    assert card["format"] == fmt and card["model_file"] == model_file.name
    assert card["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card["input"]["channels"] == pre.in_channels == 1 and card["input"]["context"] == 0
    assert card["input"]["height_width_multiple_of"] == 32
    assert card["preprocessing"]["mean"] == pytest.approx(pre.mean)
    assert card["preprocessing"]["std"] == pytest.approx(pre.std)
    assert "x / dtype_max" in card["preprocessing"]["formula"]
    assert card["output"]["activation"] == "sigmoid"
    assert card["tiling"]["tile_size"] == 512 and card["tiling"]["overlap"] == 0.25
    assert card["verified"]["max_abs_diff"] < 1e-3


def test_export_cli_refuses_to_overwrite(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported" / "unet"
    out.parent.mkdir()
    args = [f"ckpt_path={tiny_checkpoint}", f"output={out}", "verify=false"]
    code, err = run_script(args, tmp_path, capsys)
    assert code == 0, err
    first = out.with_suffix(".pt").stat().st_mtime_ns
    code, err = run_script(args, tmp_path, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: output: {out}.pt already exists; pass overwrite=true to replace it"
    ]
    assert out.with_suffix(".pt").stat().st_mtime_ns == first
    code, err = run_script([*args, "overwrite=true"], tmp_path, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet.json", "unet.pt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ckpt_path=missing.ckpt"], "error: ckpt_path: missing.ckpt: file not found"),
        (
            ["format=tflite"],
            "error: format must be one of torchscript, onnx, bioimageio; got 'tflite'",
        ),
        (["inference.tile_size=500"], "error: inference.tile_size=500 is not a multiple of 32"),
        ([f"output={Path('/nonexistent/dir/m')}"], "error: output: directory /nonexistent/dir"),
    ],
)
def test_export_cli_errors(tiny_checkpoint, tmp_path, capsys, args, message):
    if not any(arg.startswith("ckpt_path=") for arg in args):
        args = [f"ckpt_path={tiny_checkpoint}", *args]
    code, err = run_script(args, tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert not list((tmp_path / "hydra").glob("*model*"))


def test_output_paths():
    assert output_paths("a/m", "onnx") == (Path("a/m.onnx"), Path("a/m.json"))
    assert output_paths("a/m.pt", "torchscript") == (Path("a/m.pt"), Path("a/m.json"))
    assert output_paths("a/m.v2", "onnx") == (Path("a/m.v2.onnx"), Path("a/m.v2.json"))
    with pytest.raises(ConfigError, match="format must be one of"):
        output_paths("m", "keras")
