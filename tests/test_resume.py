"""Resuming: from last.ckpt of the same run directory, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from emseg.errors import ConfigError
from emseg.losses import MaskedBCEWithLogitsLoss
from emseg.train import build, run


def test_resume_continues_from_last_checkpoint(tiny_cfg):
    first = run(tiny_cfg("trainer.max_epochs=1", "test_after_fit=false"))
    assert first["global_step"] == 2
    out = Path(tiny_cfg().paths.output_dir)
    (out / "metrics.json").unlink()  # as if the run had been killed after its checkpoint
    saved = _timer_seconds(out / "checkpoints" / "last.ckpt")
    assert 0 < saved <= first["fit_seconds"]
    resumed = run(tiny_cfg("trainer.max_epochs=2", "test_after_fit=false", "resume=true"))
    assert resumed["global_step"] == 4  # two more steps, not four from scratch
    # fit_seconds spans both processes: the first one's time up to its checkpoint, plus this one
    assert saved < resumed["fit_seconds"] <= saved + resumed["fit_seconds_this_process"]
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 4
    assert not list(out.rglob(".*.tmp-*")), "temporary checkpoint files left behind"


def _timer_seconds(checkpoint: Path) -> float:
    """Training seconds stored in a checkpoint by Lightning's Timer callback."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]
    return state["Timer"]["time_elapsed"]["train"]


def test_timer_state_survives_resume(tiny_cfg):
    """The run's one Timer restores the elapsed training time from the checkpoint: after the
    resumed fit it is exactly the saved time plus this process's training time."""
    run(tiny_cfg("trainer.max_epochs=1", "test_after_fit=false", "logger=none"))
    last = Path(tiny_cfg().paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = _timer_seconds(last)
    datamodule, module, trainer = build(tiny_cfg("trainer.max_epochs=2", "logger=none"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last))
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    this_process = timer.end_time("train") - timer.start_time("train")
    assert saved > 0 and this_process > 0
    assert timer.time_elapsed("train") == pytest.approx(saved + this_process)


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


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def _is_timing(key: str) -> bool:
    return key.startswith("perf/") or "_seconds" in key


def _assert_same_run(a: Path, b: Path) -> None:
    """Identical final weights and metrics (to the last bit), wall-clock times aside."""
    wa, wb = _weights(a / "checkpoints" / "last.ckpt"), _weights(b / "checkpoints" / "last.ckpt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    ma, mb = ({k: v for k, v in _metrics(d).items() if not _is_timing(k)} for d in (a, b))
    assert ma == mb and "val/best_fg_iou" in ma


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_run_equals_uninterrupted_run(tmp_path, synthetic_data_dir, workers):
    """Stopping after epoch 1 and resuming gives the same weights and metrics as no stop.

    With loader workers the first keys of the resumed epoch are fetched before Lightning calls
    ``set_epoch``: the sampler must already start at the restored epoch.
    """
    from tests.conftest import TINY_OVERRIDES, compose_train

    extra = [
        *TINY_OVERRIDES,
        f"data.num_workers={workers}",
        "trainer.limit_train_batches=3",
        "test_after_fit=false",
        "logger=none",
        "seed=5",
    ]
    whole = tmp_path / "whole"
    run(compose_train([*extra, "trainer.max_epochs=3"], whole, synthetic_data_dir))
    parts = tmp_path / "parts"
    run(compose_train([*extra, "trainer.max_epochs=1"], parts, synthetic_data_dir))
    (parts / "metrics.json").unlink()  # as if the run had stopped after epoch 1's checkpoint
    run(compose_train([*extra, "trainer.max_epochs=3", "resume=true"], parts, synthetic_data_dir))
    _assert_same_run(whole, parts)


def test_same_seed_gives_bit_identical_runs(tmp_path, synthetic_data_dir):
    from tests.conftest import TINY_OVERRIDES, compose_train

    extra = [*TINY_OVERRIDES, "trainer.max_epochs=2", "logger=none", "seed=11"]
    for name in ("a", "b"):
        run(compose_train(extra, tmp_path / name, synthetic_data_dir))
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    run(compose_train([*extra[:-1], "seed=12"], tmp_path / "c", synthetic_data_dir))
    wa = _weights(tmp_path / "a" / "checkpoints" / "last.ckpt")
    wc = _weights(tmp_path / "c" / "checkpoints" / "last.ckpt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa), "the seed has no effect"


class ExplodingLoss(MaskedBCEWithLogitsLoss):
    """BCE whose value turns NaN from its second call on (``calls`` is reset by the test)."""

    calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ExplodingLoss.calls += 1
        loss = super().forward(logits, target)
        return loss * float("nan") if ExplodingLoss.calls > 1 else loss


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tiny_cfg):
    from emseg.errors import EmsegError

    run(tiny_cfg("trainer.limit_train_batches=3", "test_after_fit=false"))
    out = Path(tiny_cfg().paths.output_dir)
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    (out / "metrics.json").unlink()
    ExplodingLoss.calls = 0
    cfg = tiny_cfg(
        "trainer.limit_train_batches=3",
        "trainer.max_epochs=2",
        "loss._target_=tests.test_resume.ExplodingLoss",
        "test_after_fit=false",
        "resume=true",
    )
    with pytest.raises(EmsegError, match="training loss became nan at step 4"):
        run(cfg)
    assert last.read_bytes() == before, "the last good checkpoint was overwritten"
    assert not (out / "metrics.json").exists()
    assert not list(out.rglob(".*.tmp-*")) and not list(out.glob(".emseg-run.lock"))


def _train_command(out: Path, data: Path, *extra: str) -> list[str]:
    from tests.conftest import TINY_OVERRIDES

    return [
        sys.executable,
        "train.py",
        *TINY_OVERRIDES,
        "trainer.max_epochs=6",
        "trainer.limit_train_batches=4",
        "test_after_fit=false",
        "logger=none",
        "seed=3",
        f"paths.data_dir={data}",
        f"hydra.run.dir={out}",
        "hydra/job_logging=disabled",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, synthetic_data_dir, delay):
    """``kill -9`` mid-run, then the same command with ``resume=true``: same final weights
    and metrics, to the last bit, as a run that was never interrupted."""
    from emseg.resolvers import PROJECT_ROOT

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        _train_command(whole, synthetic_data_dir), cwd=PROJECT_ROOT, check=True, timeout=900
    )
    proc = subprocess.Popen(
        _train_command(killed, synthetic_data_dir),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"
    assert (killed / ".emseg-run.lock").exists()  # left behind by the killed process
    subprocess.run(
        _train_command(killed, synthetic_data_dir, "resume=true"),
        cwd=PROJECT_ROOT,
        check=True,
        timeout=900,
    )
    _assert_same_run(whole, killed)
