"""Test-set figures: example slices (image | ground truth | prediction | errors) and tile-edge
errors of naive tiling against blended sliding-window inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from emseg.metrics import binary_scores

__all__ = [
    "ERROR_COLOURS",
    "binarize",
    "error_rgb",
    "per_slice_fg_iou",
    "pick_slices",
    "plot_edge_errors",
    "plot_examples",
]


# One colour scheme for every error overlay (report figures and TensorBoard images): true
# positives green, false positives red, false negatives blue, blended half over the image.
ERROR_COLOURS = {"tp": (0.0, 1.0, 0.0), "fp": (1.0, 0.0, 0.0), "fn": (0.0, 0.3, 1.0)}


def binarize(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground where ``probs`` (float in [0, 1], or uint8 0-255 as predict.py writes them)
    exceeds ``threshold`` (given on the [0, 1] scale)."""
    return probs > (threshold * 255 if probs.dtype == np.uint8 else threshold)


def per_slice_fg_iou(probs: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground IoU of every slice of ``(Z, Y, X)`` probabilities (uint8 0-255 or float),
    from each slice's confusion counts by :func:`emseg.metrics.binary_scores`."""
    pred, truth = binarize(probs, threshold), mask > 0
    axes = tuple(range(1, pred.ndim))
    tp = (pred & truth).sum(axis=axes)
    fp = (pred & ~truth).sum(axis=axes)
    fn = (~pred & truth).sum(axis=axes)
    tn = pred[0].size - tp - fp - fn
    counts = zip(tp, fp, tn, fn, strict=True)
    return np.array([binary_scores(*map(float, c))["fg_iou"] for c in counts])


def pick_slices(scores: np.ndarray) -> dict[str, int]:
    """The slices with the best, median and worst score (the rule behind the examples)."""
    order = np.argsort(scores, kind="stable")
    return {"best": int(order[-1]), "median": int(order[len(order) // 2]), "worst": int(order[0])}


def error_rgb(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB ``(Y, X, 3)`` float in [0, 1]: the min-max scaled grey image with the
    :data:`ERROR_COLOURS` of true positives, false positives and false negatives over it.

    Args:
        image: ``(Y, X)`` image of any numeric type and range.
        pred, truth: ``(Y, X)`` boolean prediction and ground truth.
    """
    gray = image.astype(np.float32)
    gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-6)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    regions = {"tp": pred & truth, "fp": pred & ~truth, "fn": ~pred & truth}
    for name, where in regions.items():
        rgb[where] = 0.5 * rgb[where] + 0.5 * np.asarray(ERROR_COLOURS[name], np.float32)
    return rgb


def _read_slices(path: Path, zs: list[int]) -> np.ndarray:
    volume = tifffile.imread(path)
    return (volume[None] if volume.ndim == 2 else volume)[zs]


def plot_examples(image_path, mask_path, probs_path, out_png, threshold: float = 0.5) -> dict:
    """Image | ground truth | prediction | error overlay for the best/median/worst slices.

    Returns ``{"best": (z, fg_iou), ...}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = tifffile.imread(probs_path)
    mask = tifffile.imread(mask_path) > 0
    scores = per_slice_fg_iou(probs, mask, threshold)
    chosen = pick_slices(scores)
    zs = list(chosen.values())
    images = _read_slices(Path(image_path), zs)
    fig, axes = plt.subplots(len(zs), 4, figsize=(13, 2.6 * len(zs)))
    for row, (name, z) in enumerate(chosen.items()):
        pred = binarize(probs[z], threshold)
        panels = [images[row], mask[z], pred, error_rgb(images[row], pred, mask[z])]
        titles = ["image", "ground truth", "prediction", "errors (TP green, FP red, FN blue)"]
        for col, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[row, col]
            ax.imshow(panel[::2, ::2], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(f"{name}: z={z}\nfg IoU {scores[z]:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return {name: (z, float(scores[z])) for name, z in chosen.items()}


def plot_edge_errors(
    image_path, mask_path, naive_path, blended_path, out_png, band: int = 32, threshold: float = 0.5
) -> dict:
    """Errors of naive tiling next to blended inference on the slice where naive tiling loses
    most, with the mean error rate per pixel row/column summed over the whole volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = tifffile.imread(mask_path) > 0
    results = {}
    error_maps = {}
    for name, path in (("naive", naive_path), ("blended", blended_path)):
        pred = binarize(tifffile.imread(path), threshold)
        error_maps[name] = pred ^ mask
        results[name] = pred
    gap = error_maps["naive"].sum(axis=(1, 2)) - error_maps["blended"].sum(axis=(1, 2))
    z = int(np.argmax(gap))
    image = _read_slices(Path(image_path), [z])[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for ax, name in zip(axes[:2], ("naive", "blended"), strict=True):
        ax.imshow(error_rgb(image, results[name][z], mask[z])[::2, ::2], interpolation="nearest")
        ax.set_title(f"{name}: z={z}, errors {int(error_maps[name][z].sum())} px", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for name, style in (("naive", "-"), ("blended", "--")):
        axes[2].plot(error_maps[name].mean(axis=(0, 1)), style, label=f"{name}, per column")
    axes[2].set_xlabel("x (pixels)")
    axes[2].set_ylabel("error rate over the volume")
    axes[2].legend(fontsize=8)
    axes[2].set_title("errors per image column (tile seams show as peaks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return {
        "z": z,
        "naive_errors": int(error_maps["naive"][z].sum()),
        "blended_errors": int(error_maps["blended"][z].sum()),
    }
