"""The blockwise progress line: blocks, voxels per second of this run, ETA (a fake clock)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from emseg.blockwise.progress import BlockProgress, format_duration


def state(done: int, skipped: int = 0, failed: int = 0, total: int = 100) -> SimpleNamespace:
    return SimpleNamespace(
        total_block_count=total, completed_count=done, skipped_count=skipped, failed_count=failed
    )


def test_the_line_counts_this_runs_blocks_and_predicts_the_end():
    now = [0.0]
    out = io.StringIO()
    progress = BlockProgress("predict", 100 * 2_000_000, 100, out, 30.0, lambda: now[0])
    progress.on_start({"predict": state(40, skipped=40)})
    now[0] = 60.0  # 20 blocks of 2 M voxels in a minute: 0.67 M voxels/s, 40 left = 2 min
    progress.on_progress({"predict": state(60, skipped=40, failed=1)})
    now[0] = 70.0  # within the interval: no line for a log file
    progress.on_progress({"predict": state(61, skipped=40, failed=1)})
    now[0] = 180.0
    progress.on_finish({"predict": state(100, skipped=40, failed=1)})
    lines = out.getvalue().splitlines()
    assert lines == [
        "predict: 40/100 blocks (40 done before) | 0.00 M voxels/s | ETA - | failed 0",
        "predict: 60/100 blocks (40 done before) | 0.67 M voxels/s | ETA 0:02:00 | failed 1",
        "predict: 100/100 blocks (40 done before) | 0.67 M voxels/s | ETA 0:00:00 | failed 1",
    ]
    assert format_duration(3 * 86400 + 3725.4) == "3 days, 1:02:05"


def test_a_terminal_gets_one_line_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, now = Terminal(), [0.0]
    progress = BlockProgress("predict", 10, 10, out, 30.0, lambda: now[0])
    progress.on_start({"predict": state(0, total=10)})
    now[0] = 1.0
    progress.on_progress({"predict": state(5, total=10)})
    progress.on_finish({"predict": state(10, total=10)})
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("failed 0\n")
