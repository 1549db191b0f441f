"""Compare the spot-check outputs of two code versions (issue 16, "same behaviour").

Usage: ``python compare.py <before dir> <after dir>`` (directories written by spot_check.sh).
"""

import hashlib
import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def main(a: Path, b: Path) -> None:
    rows = []
    ta, tb = load(a / "train/metrics.json")["metrics"], load(b / "train/metrics.json")["metrics"]
    keys = [k for k in ta if "seconds" not in k]
    same = all(ta[k] == tb.get(k) for k in keys)
    rows.append(("train metrics.json (non-timing keys)", same, len(keys)))
    for run in ("eval", "eval_val"):
        ma, mb = load(a / run / "metrics.json"), load(b / run / "metrics.json")
        same = ma["metrics"] == mb["metrics"] and ma["counts"] == mb["counts"]
        rows.append((f"{run} metrics + confusion counts", same, ma["metrics"]["fg_iou"]))
    ca, cb = load(a / "model.json"), load(b / "model.json")
    for card in (ca, cb):
        card["model"].pop("source_checkpoint")
    rows.append(("model.json (ONNX card, sha256 of the .onnx)", ca == cb, ca["sha256"][:12]))
    if ca != cb:
        print({k: (ca[k], cb.get(k)) for k in ca if ca[k] != cb.get(k)})
    for name in ("probs.tif", "mask.tif"):
        digests = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (a, b)]
        rows.append((name, digests[0] == digests[1], digests[0][:12]))
    for row in rows:
        print(*row, sep=" | ")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
