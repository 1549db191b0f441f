"""Issue 20's evidence: instance settings chosen on the validation hold-out, reported on test.

    python experiments/objects/sweep.py --val-probs <eval.py split=val predictions.tif> \
        --test-probs <test probabilities.tif> --out experiments/objects

Validation: the last 16 slices of data/epfl/training.tif (the experiment=fast checkpoint's
hold-out, predicted by ``eval.py split=val save_predictions=true``), truth = the 3D connected
components of the same slices of training_groundtruth.tif. Every candidate (connected
components; watershed from distance h-maxima; watershed from probability cores; each with
several minimum sizes) is scored there; the best of each kind (by AP, then F1@0.5) is then
applied once to the test volume (truth = the connected components of testing_groundtruth.tif).
Writes results.json and split_example.png (connected components vs the distance split).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from emseg.io import read_image, read_mask
from emseg.objects import InstanceSettings, instance_metrics, label_instances
from emseg.objects.volumes import load_objects_input

VOXEL = (5.0, 5.0, 5.0)
KEYS = ("n_pred", "n_true", "ap", "ap50", "ap75", "f1", "precision", "recall")
KEYS += ("mean_matched_iou", "splits", "merges")


def candidates() -> list[InstanceSettings]:
    sizes = (0, 500, 2000, 5000)
    out = [InstanceSettings(min_size=m) for m in sizes]
    for h, m in itertools.product((2.0, 4.0, 6.0, 8.0, 12.0), sizes):
        out.append(InstanceSettings(split="distance", seed_h=h, min_size=m))
    for t, m in itertools.product((0.9, 0.95, 0.98), sizes):
        out.append(InstanceSettings(split="cores", core_threshold=t, seed_min_size=50, min_size=m))
    return out


def score(probability: np.ndarray, truth: np.ndarray, settings: InstanceSettings) -> dict:
    start = time.perf_counter()
    labels = label_instances(probability > 0.5, settings, probability, VOXEL)
    metrics = instance_metrics(labels, truth, probability)
    row = {"settings": settings.as_dict(), **{k: metrics[k] for k in KEYS}}
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row, labels


def components(mask: np.ndarray) -> np.ndarray:
    return ndimage.label(mask, ndimage.generate_binary_structure(3, 1))[0].astype(np.uint32)


def figure(image, before, after, path: Path) -> dict:
    """A few touching mitochondria: the no-split component that the split divides into the
    most pieces (largest first), its slice with most of the pieces, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = {}
    for box_id, box in enumerate(ndimage.find_objects(before), start=1):
        if box is None:
            continue
        inside = after[box][before[box] == box_id]
        ids = np.unique(inside[inside > 0])
        if len(ids) >= 2:
            pieces[box_id] = (len(ids), int((before[box] == box_id).sum()), box)
    if not pieces:
        return {"component": None}
    chosen = max(pieces, key=lambda k: (pieces[k][0], pieces[k][1]))
    count, voxels, box = pieces[chosen]
    region = before == chosen
    per_slice = [len(np.unique(after[z][region[z]])) for z in range(box[0].start, box[0].stop)]
    z = box[0].start + int(np.argmax(per_slice))
    ys = slice(max(box[1].start - 20, 0), min(box[1].stop + 20, image.shape[1]))
    xs = slice(max(box[2].start - 20, 0), min(box[2].stop + 20, image.shape[2]))
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, (int(max(before.max(), after.max())) + 1, 3))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=80)
    axes[0].imshow(image[z, ys, xs], cmap="gray")
    axes[0].set_title(f"EM, test slice z={z}")
    for ax, labels, title in (
        (axes[1], before, "connected components (no split)"),
        (axes[2], after, f"watershed split: {count} objects"),
    ):
        crop = labels[z, ys, xs]
        overlay = np.dstack([image[z, ys, xs] / 255.0] * 3)
        overlay[crop > 0] = 0.45 * overlay[crop > 0] + 0.55 * colours[crop[crop > 0]]
        ax.imshow(overlay)
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return {
        "component_voxels": voxels,
        "pieces": count,
        "z": z,
        "y": [ys.start, ys.stop],
        "x": [xs.start, xs.stop],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--val-probs", required=True)
    parser.add_argument("--test-probs", required=True)
    parser.add_argument("--data", default="data/epfl")
    parser.add_argument("--out", default="experiments/objects")
    args = parser.parse_args()
    out = Path(args.out)
    data = Path(args.data)
    val = load_objects_input(args.val_probs, "probabilities").probability
    val_truth = components(read_mask(data / "training_groundtruth.tif")[-len(val) :])
    rows = []
    for settings in candidates():
        row, _ = score(val, val_truth, settings)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def key(row: dict) -> tuple:  # AP, then F1@0.5 (AP ties: small objects rank last)
        return row["ap"], row["f1"]

    best = {
        family: max((r for r in rows if r["settings"]["split"] == family), key=key)
        for family in ("none", "distance", "cores")
    }
    test = load_objects_input(args.test_probs, "probabilities").probability
    test_truth = components(read_mask(data / "testing_groundtruth.tif"))
    results = {
        "chosen_on": "validation (last 16 slices of training.tif): best AP, then F1, per split",
        "best_on_validation": max(best, key=lambda f: key(best[f])),
    }
    labels = {}
    for family, chosen in best.items():
        settings = InstanceSettings(**chosen["settings"])
        row, labels[family] = score(test, test_truth, settings)
        results[family] = {"validation": chosen, "test": row}
        print(family, json.dumps(row), flush=True)
    image = read_image(data / "testing.tif")
    results["figure"] = figure(image, labels["none"], labels["distance"], out / "split_example.png")
    results["validation_candidates"] = rows
    results["command"] = " ".join(["python", *sys.argv])
    results["python"] = platform.python_version()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
