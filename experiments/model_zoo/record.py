"""Collect the issue-21 record from outputs/model_zoo (see run.sh): results.json, the package's
rdf.yaml and small files (the weights stay out: the package is 270 MB), the test reports.

    .venv/bin/python experiments/model_zoo/record.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "outputs" / "model_zoo"
HERE = Path(__file__).resolve().parent
SMALL = ("rdf.yaml", "README.md", "cover.png", "emseg_unet.py", "environment.yaml")
METRICS = ("fg_iou", "mean_iou", "dice", "accuracy", "precision", "recall")


def _eval(name: str) -> dict:
    record = json.loads((OUT / name / "metrics.json").read_text())
    return {
        "command": "python eval.py "
        + " ".join(yaml.safe_load((OUT / name / ".hydra" / "overrides.yaml").read_text())),
        "model": record["checkpoint"],
        "metrics": {key: record["metrics"][key] for key in METRICS},
        "counts": record["counts"],
        "inference": record["inference"],
        "postprocess": record["postprocess"],
        "checkpoint_settings": record["checkpoint_settings"],
        "seconds": round(record["seconds"], 1),
    }


def main() -> None:
    package = OUT / "fast.zip"
    (HERE / "package").mkdir(exist_ok=True)
    with zipfile.ZipFile(package) as archive:
        for name in SMALL:
            (HERE / "package" / name).write_bytes(archive.read(name))
        members = {info.filename: info.file_size for info in archive.infolist()}
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    for name in ("fast.test.json", "fast.test.md"):
        shutil.copyfile(OUT / name, HERE / name)
    report = json.loads((OUT / "fast.test.json").read_text())
    checkpoint, through = _eval("eval_checkpoint"), _eval("eval_package")
    diff = {k: through["metrics"][k] - checkpoint["metrics"][k] for k in METRICS}
    # eval_package ran on the first export; the package was then written again (README text
    # only): the same network and test tensors if their hashes agree.
    evaluated = yaml.safe_load((OUT / "fast_evaluated_rdf.yaml").read_text())
    same = {
        "weights.pytorch_state_dict": evaluated["weights"]["pytorch_state_dict"]["sha256"]
        == rdf["weights"]["pytorch_state_dict"]["sha256"],
        "test_input": evaluated["inputs"][0]["test_tensor"]["sha256"]
        == rdf["inputs"][0]["test_tensor"]["sha256"],
        "test_output": evaluated["outputs"][0]["test_tensor"]["sha256"]
        == rdf["outputs"][0]["test_tensor"]["sha256"],
        "preprocessing": evaluated["inputs"][0]["preprocessing"]
        == rdf["inputs"][0]["preprocessing"],
    }
    results = {
        "package": {
            "file": str(package.relative_to(ROOT)),
            "bytes": package.stat().st_size,
            "sha256": hashlib.sha256(package.read_bytes()).hexdigest(),
            "members": members,
            "weights": {k: v["sha256"] for k, v in rdf["weights"].items()},
            "format_version": rdf["format_version"],
        },
        "bioimageio_core_test": {
            "status": report["status"],
            "checks": [(d["name"], d["status"]) for d in report["details"]],
            "versions": {p: version(p) for p in ("bioimageio.core", "bioimageio.spec")},
        },
        "evaluated_package": {
            "sha256": (OUT / "fast_evaluated.sha256").read_text().split()[0],
            "same_as_recorded": same,
        },
        "eval_checkpoint": checkpoint,
        "eval_package": through,
        "package_minus_checkpoint": diff,
        "fg_iou_equal_to_1e-3": abs(diff["fg_iou"]) <= 1e-3,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("package_minus_checkpoint", "fg_iou_equal_to_1e-3")}))


if __name__ == "__main__":
    main()
