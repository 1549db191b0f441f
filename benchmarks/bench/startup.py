"""Start-up: wall seconds from launching ``python train.py`` to its first training step.

``train.py`` runs unchanged with the issue's configuration; one extra callback, added with a
Hydra override (``+callbacks.bench_first_step=...``), writes wall-clock timestamps at the
stages of start-up and ends the process at the first ``on_train_batch_start``. Stages:

* ``callbacks_built``: imports, config composition, seeding and the network build (the
  callbacks are instantiated by :func:`emseg.train.build` after the model);
* ``setup_done``: environment record and the DataModule's ``setup`` (reading the volumes);
* ``sanity_done``: Lightning's sanity validation step (one whole validation slice);
* ``first_step``: loader workers started and the first batch fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks.bench.common import TRAIN_OVERRIDES
from emseg.resolvers import PROJECT_ROOT

__all__ = ["FirstStepExit", "measure_startup"]


class FirstStepExit(L.Callback):
    """Record start-up timestamps to ``path`` (JSON) and exit at the first training step."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.marks: dict[str, float] = {"callbacks_built": time.time()}

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.marks))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.marks["setup_done"] = time.time()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self.marks["sanity_done"] = time.time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks["first_step"] = time.time()
        self._write()
        # Only start-up is measured: leave without training, validating or writing anything
        # more (the loader workers notice their parent is gone and exit).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def measure_startup(workdir: Path, extra_overrides: list[str] | None = None) -> dict[str, Any]:
    """Run ``python train.py experiment=seed_report model.encoder_weights=null`` once.

    Returns:
        ``seconds_to_first_step`` and the seconds of each stage (see the module docstring),
        plus ``import_s``: a separate ``python -c 'import emseg.train'`` (the import share).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    marks_file = workdir / "startup_marks.json"
    command = [
        sys.executable,
        "train.py",
        *TRAIN_OVERRIDES,
        f"hydra.run.dir={workdir / 'run'}",
        "+callbacks.bench_first_step._target_=benchmarks.bench.startup.FirstStepExit",
        f"+callbacks.bench_first_step.path={marks_file}",
        *(extra_overrides or []),
    ]
    launched = time.time()
    with open(workdir / "train_stdout.log", "w") as out:
        code = subprocess.run(
            command, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0 or not marks_file.exists():
        raise RuntimeError(f"train.py exited with {code} before its first step: {workdir}")
    marks = json.loads(marks_file.read_text())
    stages, previous = {}, launched
    for name in ("callbacks_built", "setup_done", "sanity_done", "first_step"):
        if name in marks:
            stages[name] = marks[name] - previous
            previous = marks[name]
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import emseg.train"], cwd=PROJECT_ROOT, check=True)
    return {
        "command": " ".join(["python", *command[1:4]]),
        "seconds_to_first_step": marks["first_step"] - launched,
        "stages_s": stages,
        "import_s": time.time() - t0,
    }
