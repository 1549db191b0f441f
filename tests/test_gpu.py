"""On a CUDA GPU: a mixed-precision fit of the tiny network and eval.py of its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emseg.train import run
from tests.conftest import TINY_OVERRIDES, compose_train, run_script

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_mixed_precision_fit_and_evaluation(tmp_path, capsys, synthetic_data_dir):
    # The tiny run without its CPU pins: precision and memory layout resolve to their auto values.
    cpu_only = ("trainer.accelerator=", "trainer.precision=")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(cpu_only)]
    overrides += ["trainer.accelerator=gpu", "logger=none", "test_after_fit=false"]
    cfg = compose_train(overrides, tmp_path / "run", synthetic_data_dir)
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    assert cfg.trainer.precision == expected and cfg.module.channels_last
    metrics = run(cfg)
    assert metrics["global_step"] == 2 and 0.0 <= metrics["val/fg_iou"] <= 1.0

    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "data=epfl", f"paths.data_dir={synthetic_data_dir}"]
    args += ["inference.device=cuda", "limit_slices=2", "progress=false"]
    code, err = run_script("eval.py", args, tmp_path, capsys)
    assert code == 0, err[-3000:]
    scores = json.loads((tmp_path / "hydra" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= scores["fg_iou"] <= 1.0
