"""The live progress line of a blockwise run: blocks done / total, voxels per second, ETA.

A daisy progress observer (``daisy.run_blockwise(progress=observer)`` calls ``on_start``,
``on_progress`` and ``on_finish`` with the task states). daisy's own bar counts blocks only;
a user of a 10^11-voxel run wants the throughput and when it will end, so emseg draws its own:

    predict: 120/2304 blocks (64 done before) | 3.1 M voxels/s | ETA 2:41:07 | failed 0

On a terminal the line is redrawn in place; otherwise (a log file, SLURM's output) it is
printed at most every ``interval_s`` seconds, and once at the end. The rate counts the blocks
of this run only (not those a resumed run skips), since the scheduler started, so the
workers' start-up is in it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["BlockProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``D days, H:MM:SS``)."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} days, {clock}" if days else clock


class BlockProgress:
    """A daisy observer printing one progress line (see the module docstring).

    Args:
        task_id: the daisy task to follow.
        voxels: voxels of the whole region (all blocks).
        blocks: blocks in the plan (voxels per block = ``voxels / blocks`` on average).
        stream: where to print (stderr by default).
        interval_s: seconds between lines when ``stream`` is not a terminal.
        clock: the time source (a test's fake clock).
    """

    def __init__(
        self,
        task_id: str,
        voxels: int,
        blocks: int,
        stream: TextIO | None = None,
        interval_s: float = 30.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.task_id, self.voxels, self.blocks = task_id, int(voxels), max(1, int(blocks))
        self.stream = stream or sys.stderr
        self.interval_s, self.clock = float(interval_s), clock
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.clock()
        self.printed = -float("inf")
        self.last_line = ""

    def line(self, state: Any) -> str:
        """The progress line of a daisy task state."""
        total = int(state.total_block_count)
        skipped = int(state.skipped_count)
        done = int(state.completed_count)
        now_done = done - skipped
        elapsed = max(1e-9, self.clock() - self.start)
        per_block = self.voxels / self.blocks
        rate = now_done * per_block / elapsed
        left = total - done
        eta = format_duration(left * elapsed / now_done) if now_done and left else "-"
        before = f" ({skipped} done before)" if skipped else ""
        return (
            f"{self.task_id}: {done}/{total} blocks{before} | {rate / 1e6:.2f} M voxels/s | "
            f"ETA {eta if left else '0:00:00'} | failed {int(state.failed_count)}"
        )

    def _show(self, state: Any, final: bool = False) -> None:
        text = self.line(state)
        now = self.clock()
        if self.live:
            pad = max(0, len(self.last_line) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        elif final or now - self.printed >= self.interval_s:
            self.stream.write(text + "\n")
            self.printed = now
        self.last_line = text
        self.stream.flush()

    def on_start(self, states: dict[str, Any]) -> None:
        """daisy: the run started (the clock starts here)."""
        self.start = self.clock()
        if self.task_id in states:
            self._show(states[self.task_id])

    def on_progress(self, states: dict[str, Any]) -> None:
        """daisy: a block changed state."""
        if self.task_id in states:
            self._show(states[self.task_id])

    def on_finish(self, states: dict[str, Any]) -> None:
        """daisy: the run ended (the last line, always printed)."""
        if self.task_id in states:
            self._show(states[self.task_id], final=True)
