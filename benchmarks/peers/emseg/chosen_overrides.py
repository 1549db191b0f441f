"""Print the settings train.py chose on the validation hold-out as command-line overrides.

    python benchmarks/peers/emseg/chosen_overrides.py <run_dir>
One ``key=value`` per line (``inference.tta=flips``, ``postprocess.median_nm=35``,
``threshold=0.5``), from ``<run_dir>/metrics.json``'s ``evaluation`` block; nothing when the run
chose none. The snapshot checkpoints store no block (only the best one does), so run.sh applies
the best checkpoint's settings to them explicitly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def overrides(run_dir: Path) -> list[str]:
    """The chosen settings of ``run_dir`` as Hydra overrides."""
    block = json.loads((run_dir / "metrics.json").read_text()).get("evaluation") or {}
    lines = []
    for group in ("inference", "postprocess"):
        for key, value in (block.get(group) or {}).items():
            text = json.dumps(value).replace(" ", "") if isinstance(value, list) else value
            lines.append(f"{group}.{key}={'null' if value is None else text}")
    if "threshold" in block:
        lines.append(f"threshold={block['threshold']}")
    return lines


if __name__ == "__main__":
    print("\n".join(overrides(Path(sys.argv[1]))))
