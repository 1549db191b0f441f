"""Resuming: from last.ckpt of the same run directory, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emseg.errors import ConfigError
from emseg.train import run


def test_resume_continues_from_last_checkpoint(tiny_cfg):
    first = run(tiny_cfg("trainer.max_epochs=1", "test_after_fit=false"))
    assert first["global_step"] == 2
    out = Path(tiny_cfg().paths.output_dir)
    (out / "metrics.json").unlink()  # as if the run had been killed after its checkpoint
    resumed = run(tiny_cfg("trainer.max_epochs=2", "test_after_fit=false", "resume=true"))
    assert resumed["global_step"] == 4  # two more steps, not four from scratch
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 4
    assert not list(out.rglob(".*.tmp-*")), "temporary checkpoint files left behind"


def test_completed_run_is_not_repeated(tiny_cfg):
    run(tiny_cfg("test_after_fit=false"))
    out = Path(tiny_cfg().paths.output_dir)
    before = (out / "metrics.json").read_text()
    again = run(tiny_cfg("test_after_fit=false", "resume=true"))
    assert again == json.loads(before)["metrics"]


@pytest.mark.parametrize("content", [None, b"garbage", {"no": "state"}])
def test_bad_ckpt_path_is_a_config_error(tiny_cfg, tmp_path, content):
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match="ckpt_path"):
        run(tiny_cfg(f"ckpt_path={path}"))
