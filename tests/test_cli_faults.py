"""Every input fault of README's table, through the real entry points.

Each case runs a root script (train.py, eval.py, predict.py) or ``python -m emseg.data.prepare``
with one fault and checks the contract: exit code 2, stderr is exactly one ``error: ...`` line
naming the file or key and the problem, no traceback, and nothing left behind or destroyed.
The matrix runs in-process (the same root script through ``runpy``; seconds) by default, and as
real subprocesses under ``-m slow`` (``make test-all``; a few seconds of start-up per case).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emseg.resolvers import PROJECT_ROOT
from tests.conftest import TINY_OVERRIDES, make_volume, run_script


@dataclass(frozen=True)
class Fault:
    """One bad invocation: ``script`` with ``args`` must fail with a line matching ``message``.

    Args use ``{bad}`` for the directory of faulty files, ``{data}`` for a valid data directory,
    ``{ckpt}`` for a valid checkpoint and ``{out}`` for a fresh output directory.
    """

    script: str
    args: tuple[str, ...]
    message: str
    untouched: tuple[str, ...] = field(default=())  # files under {out} that must not change


TRAIN = ("train.py", *TINY_OVERRIDES, "logger=none", "paths.data_dir={data}")
EVAL = ("eval.py", "ckpt_path={ckpt}", "data=epfl", "paths.data_dir={data}", "progress=false")
PREDICT = ("predict.py", "ckpt_path={ckpt}", "input={bad}/small.tif", "progress=false")

FAULTS: dict[str, Fault] = {
    # --- train.py: data files ---
    "train missing file": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/missing.tif"), r"missing.tif: file not found"
    ),
    # A directory is a folder of 2D slices: this one holds broken files, the first is refused.
    "train directory": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}"), r"faulty\d+/\S+: (a slice|not a readable)"
    ),
    "train empty file": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/empty.tif"), r"empty.tif: file is empty"
    ),
    "train truncated tiff": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/truncated.tif"), r"truncated.tif: .*TIFF"
    ),
    "train not a tiff": Fault(
        TRAIN[0],
        (*TRAIN[1:], "data.train_image={bad}/notes.tif"),
        r"notes.tif: not a readable TIFF",
    ),
    "train 4d": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/4d.tif"), r"4d.tif: .*2D \(Y, X\) or 3D"
    ),
    "train rgb": Fault(TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/rgb.tif"), r"rgb.tif: .*RGB"),
    "train zero slices": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/zero.tif"), r"zero.tif: .*empty"
    ),
    "train shape mismatch": Fault(
        TRAIN[0],
        (*TRAIN[1:], "data.train_image={bad}/other_shape.tif"),
        r"other_shape.tif has shape .* but labels .* they must match",
    ),
    "train non-binary mask": Fault(
        TRAIN[0],
        (*TRAIN[1:], "data.train_mask={bad}/mask3.tif"),
        r"mask3.tif: uint8 labels with values \[1, 2\] are neither a \{0, 1\} / \{0, 255\} mask",
    ),
    "train nan image": Fault(
        TRAIN[0], (*TRAIN[1:], "data.train_image={bad}/nan.tif"), r"nan.tif: .*NaN or Inf"
    ),
    # --- train.py: configuration ---
    "train unknown option": Fault(
        TRAIN[0], (*TRAIN[1:], "loss=nope"), r"Could not find 'loss/nope'.*bce, bce_dice, dice"
    ),
    "train unknown key": Fault(
        TRAIN[0], (*TRAIN[1:], "data.batchsize=4"), r"data.batchsize.*not in struct"
    ),
    "train zero size": Fault(
        TRAIN[0], (*TRAIN[1:], "data.patch_size=0"), r"data.patch_size must be a positive integer"
    ),
    "train negative size": Fault(
        TRAIN[0], (*TRAIN[1:], "data.batch_size=-2"), r"data.batch_size .*must be a positive"
    ),
    "train non-number": Fault(
        TRAIN[0], (*TRAIN[1:], "trainer.max_epochs=abc"), r"trainer.max_epochs must be a positive"
    ),
    "train missing checkpoint": Fault(
        TRAIN[0], (*TRAIN[1:], "ckpt_path={bad}/missing.ckpt"), r"ckpt_path: .*does not exist"
    ),
    "train corrupt checkpoint": Fault(
        TRAIN[0], (*TRAIN[1:], "ckpt_path={bad}/corrupt.ckpt"), r"ckpt_path: .*not a readable"
    ),
    "train incompatible checkpoint": Fault(
        TRAIN[0],
        (*TRAIN[1:], "ckpt_path={bad}/other_model.ckpt"),
        r"ckpt_path: .*does not fit this model",
    ),
    "train over a finished run": Fault(
        TRAIN[0],
        (*TRAIN[1:], "paths.output_dir={out}"),
        r"already holds a training run \(metrics.json\): pass resume=true",
        untouched=("metrics.json", "checkpoints/last.ckpt"),
    ),
    # --- eval.py ---
    "eval missing checkpoint": Fault(
        EVAL[0], ("ckpt_path={bad}/missing.ckpt", *EVAL[2:]), r"missing.ckpt: file not found"
    ),
    "eval corrupt checkpoint": Fault(
        EVAL[0], ("ckpt_path={bad}/corrupt.ckpt", *EVAL[2:]), r"corrupt.ckpt is not a readable"
    ),
    "eval overlap >= 1": Fault(
        EVAL[0], (*EVAL[1:], "inference.overlap=1.0"), r"inference.overlap must be in \[0, 1\)"
    ),
    "eval zero tile": Fault(
        EVAL[0], (*EVAL[1:], "inference.tile_size=0"), r"inference.tile_size must be positive"
    ),
    "eval shape mismatch": Fault(
        EVAL[0],
        (*EVAL[1:], "data.test_image={bad}/other_shape.tif"),
        r"other_shape.tif has shape .* they must match",
    ),
    "eval mask values": Fault(
        EVAL[0],
        (*EVAL[1:], "data.test_mask={bad}/mask3.tif"),
        r"mask3.tif: uint8 labels with values \[1, 2\]",
    ),
    # --- predict.py ---
    "predict missing input": Fault(
        PREDICT[0],
        (*PREDICT[1:], "input={bad}/missing.tif", "output={out}/o.tif"),
        r"missing.tif: file not found",
    ),
    "predict not a tiff": Fault(
        PREDICT[0],
        (*PREDICT[1:], "input={bad}/notes.tif", "output={out}/o.tif"),
        r"notes.tif: not a readable TIFF",
    ),
    "predict truncated tiff": Fault(
        PREDICT[0],
        (*PREDICT[1:], "input={bad}/truncated.tif", "output={out}/o.tif"),
        r"truncated.tif: .*TIFF",
    ),
    "predict 4d": Fault(
        PREDICT[0],
        (*PREDICT[1:], "input={bad}/4d.tif", "output={out}/o.tif"),
        r"4d.tif: .*2D \(Y, X\) or 3D",
    ),
    "predict nan": Fault(
        PREDICT[0],
        (*PREDICT[1:], "input={bad}/nan.tif", "output={out}/o.tif"),
        r"nan.tif: .*NaN",
    ),
    "predict output dir missing": Fault(
        PREDICT[0], (*PREDICT[1:], "output={out}/nowhere/o.tif"), r"output: directory .* not exist"
    ),
    "predict output not writable": Fault(
        PREDICT[0], (*PREDICT[1:], "output=/sys/o.tif"), r"output: cannot write to /sys"
    ),
    "predict output exists": Fault(
        PREDICT[0],
        (*PREDICT[1:], "output={out}/metrics.json"),
        r"metrics.json already exists; pass overwrite=true",
        untouched=("metrics.json",),
    ),
    "predict missing key": Fault(
        PREDICT[0],
        ("ckpt_path={ckpt}", "input={bad}/small.tif"),
        r"Missing mandatory value: output",
    ),
    "predict bad threshold": Fault(
        PREDICT[0], (*PREDICT[1:], "output={out}/o.tif", "threshold=1.5"), r"threshold must be in"
    ),
}


def _write_faulty_files(bad: Path, data: Path, ckpt: Path) -> None:
    image, mask = make_volume()
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "empty.tif").write_bytes(b"")
    (bad / "notes.tif").write_text("not a TIFF\n" * 20)
    tifffile.imwrite(bad / "whole.tif", image, compression="zlib")
    data_bytes = (bad / "whole.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(data_bytes[: len(data_bytes) // 2])
    tifffile.imwrite(bad / "4d.tif", np.zeros((2, 3, 32, 32), np.uint8))
    tifffile.imwrite(bad / "rgb.tif", np.zeros((32, 40, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(bad / "zero.tif", np.zeros((0, 96, 96), np.uint8))
    tifffile.imwrite(bad / "other_shape.tif", image[:, :80])
    tifffile.imwrite(bad / "mask3.tif", (mask > 0).astype(np.uint8) * 2 + (mask == 0))
    nan = image.astype(np.float32)
    nan[1, 2, 3] = np.nan
    tifffile.imwrite(bad / "nan.tif", nan)
    tifffile.imwrite(bad / "small.tif", image[0, :20, :30])
    (bad / "corrupt.ckpt").write_bytes(os.urandom(2000))
    other = torch.load(ckpt, map_location="cpu", weights_only=False)
    other["state_dict"] = {k: v.reshape(-1)[:1] for k, v in other["state_dict"].items()}
    torch.save(other, bad / "other_model.ckpt")


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory, synthetic_data_dir, tiny_checkpoint) -> dict[str, Path]:
    bad = tmp_path_factory.mktemp("faulty")
    _write_faulty_files(bad, synthetic_data_dir, tiny_checkpoint)
    return {"bad": bad, "data": synthetic_data_dir, "ckpt": tiny_checkpoint}


def _prepare_out(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """An output directory holding a finished run (its files must survive every fault)."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, out / "checkpoints" / "last.ckpt")
    (out / "metrics.json").write_text('{"metrics": {}}\n')
    return out


def _digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _check(name: str, code: int, stderr: str, out: Path, before: dict[str, str]) -> None:
    fault = FAULTS[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    assert len([line for line in lines if line.startswith("error")]) == 1, stderr
    assert re.search(fault.message, lines[-1]), lines[-1]
    assert _digests(out) == before, "the fault changed or added files in the output directory"


def _args(name: str, env: dict[str, Path], out: Path) -> list[str]:
    values = {**{k: str(v) for k, v in env.items()}, "out": str(out)}
    return [arg.format(**values) for arg in FAULTS[name].args]


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_in_process(name, fault_env, tmp_path, capsys, tiny_checkpoint):
    out = _prepare_out(tmp_path, tiny_checkpoint)
    before = _digests(out)
    code, stderr = run_script(FAULTS[name].script, _args(name, fault_env, out), tmp_path, capsys)
    _check(name, code, stderr, out, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_subprocess(name, fault_env, tmp_path, tiny_checkpoint):
    out = _prepare_out(tmp_path, tiny_checkpoint)
    before = _digests(out)
    quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    result = subprocess.run(
        [sys.executable, FAULTS[name].script, *_args(name, fault_env, out), *quiet]
        + [f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    _check(name, result.returncode, result.stderr, out, before)


def test_full_error_shows_the_traceback(fault_env, tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """``HYDRA_FULL_ERROR=1`` is the documented way to see where an error came from."""
    from emseg.errors import DataError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    out = _prepare_out(tmp_path, tiny_checkpoint)
    with pytest.raises(DataError, match="missing.tif"):
        run_script("train.py", _args("train missing file", fault_env, out), tmp_path, capsys)


def test_make_data_checksum_mismatch(tmp_path):
    """``make data`` (python -m emseg.data.prepare): a corrupted download is refused, unlinked."""
    source = tmp_path / "shared"
    (source / "epfl").mkdir(parents=True)
    (source / "epfl" / "training.tif").write_bytes(b"tampered")
    good = hashlib.sha256(b"original").hexdigest()
    (source / "SHA256SUMS").write_text(f"{good}  epfl/training.tif\n")
    dest = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "emseg.data.prepare", "--source", str(source), "--dest", str(dest)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    assert any("training.tif" in line and "SHA" in line.upper() for line in lines), result.stderr
    assert not (dest / "epfl" / "training.tif").exists()
