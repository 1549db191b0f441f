"""One run per directory: concurrent jobs cannot share one, a fresh run cannot clobber one."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from emseg.errors import ConfigError
from emseg.run_dir import LOCK_NAME, claim_run_dir


def _lock(directory: Path, pid: int, host: str | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname()}
    (directory / LOCK_NAME).write_text(json.dumps(record))


def test_claim_is_released_afterwards(tmp_path):
    with claim_run_dir(tmp_path / "run", resuming=False):
        assert (tmp_path / "run" / LOCK_NAME).exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_running_job_keeps_its_directory(tmp_path):
    """A second job (here: a live `sleep` process holds the lock) gets a clear error."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _lock(tmp_path, holder.pid)
        with pytest.raises(ConfigError, match=f"in use by another training run .*{holder.pid}"):
            with claim_run_dir(tmp_path, resuming=True):
                pass
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_nested_claim_in_one_process_is_refused(tmp_path):
    with claim_run_dir(tmp_path, resuming=False):
        with pytest.raises(ConfigError, match="in use"):
            with claim_run_dir(tmp_path, resuming=False):
                pass


@pytest.mark.parametrize("content", ["dead", "corrupt"])
def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, content):
    if content == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait()  # its pid no longer names a running process
        _lock(tmp_path, finished.pid)
    else:
        (tmp_path / LOCK_NAME).write_text("{half a reco")
    with claim_run_dir(tmp_path, resuming=True):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] > 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_another_hosts_lock_is_respected(tmp_path):
    _lock(tmp_path, 1, host="some-other-node")
    with pytest.raises(ConfigError, match="some-other-node"):
        with claim_run_dir(tmp_path, resuming=True):
            pass


@pytest.mark.parametrize("existing", ["metrics.json", "checkpoints/last.ckpt"])
def test_fresh_run_refuses_a_directory_with_a_run(tmp_path, existing):
    path = tmp_path / existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    with pytest.raises(ConfigError, match="already holds a training run .*resume=true"):
        with claim_run_dir(tmp_path, resuming=False):
            pass
    assert path.read_text() == "x" and not (tmp_path / LOCK_NAME).exists()
    with claim_run_dir(tmp_path, resuming=True):  # continuing it is what resume is for
        pass
