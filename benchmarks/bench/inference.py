"""Inference: whole-volume seconds of the default settings against one bare forward pass per
slice, TTA per mode, peak RSS on the test volume and on a large synthetic volume, and the fg IoU
of inference settings and precisions on the validation hold-out (never the test volume: the
default is chosen there).

Timed passes run in fresh processes (:mod:`benchmarks.bench.infer_worker`) one after the other, so
each peak RSS belongs to that pass alone and no two heavy processes share the cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from hydra.utils import instantiate

from benchmarks.bench.common import compose_config, log
from benchmarks.bench.infer_worker import pipeline_for, run_job
from emseg.io import read_pair
from emseg.resolvers import PROJECT_ROOT
from emseg.volume_scores import evaluate_volume

__all__ = [
    "inference_settings",
    "make_big_volume",
    "run_isolated",
    "timing",
    "validation_quality",
]

GIB = 1024**3


def inference_settings(name: str = "default", **overrides: Any) -> dict[str, Any]:
    """``conf/inference/<name>.yaml`` as WindowSettings fields, plus ``overrides``."""
    cfg = compose_config("eval", [f"inference={name}", "ckpt_path=unused"])
    return {**instantiate(cfg.inference).as_dict(), **overrides}


def run_isolated(job: dict[str, Any], isolate: bool = True) -> dict[str, Any]:
    """Run an inference job in a fresh Python process (or in this one when ``isolate`` is off,
    for the quick mode, whose RSS is then this process's)."""
    if not isolate:
        return run_job(job)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench.infer_worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,  # where ``benchmarks`` is importable
    )
    if done.returncode != 0:
        raise RuntimeError(f"inference worker failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_big_volume(source: Path, path: Path, shape: tuple[int, int, int]) -> Path:
    """A ``shape`` uint8 TIFF built from ``source``'s slices, each reflect-padded (bottom/right)
    to the target size, written page by page (nothing the size of the volume is in memory)."""
    depth, height, width = shape
    with tifffile.TiffFile(source) as tif:
        pages = [page.asarray() for page in tif.pages[: min(depth, len(tif.pages))]]
    with tifffile.TiffWriter(path) as writer:
        for z in range(depth):
            page = pages[z % len(pages)]
            while page.shape[0] < height or page.shape[1] < width:
                pad_y = min(height - page.shape[0], page.shape[0] - 1)
                pad_x = min(width - page.shape[1], page.shape[1] - 1)
                page = np.pad(page, ((0, pad_y), (0, pad_x)), mode="reflect")
            writer.write(page[:height, :width], contiguous=True)
    return path


def _timed_pass(
    name: str,
    kind: str,
    volume: Path,
    ckpt: str,
    settings: dict[str, Any],
    limit: int | None,
    isolate: bool,
) -> dict[str, Any]:
    """One :func:`~benchmarks.bench.infer_worker.run_job` pass over the first ``limit`` slices."""
    log(f"inference: {name} on {volume.name} ({limit or 'all'} slices)")
    job = {"kind": kind, "input": str(volume), "ckpt": ckpt, "settings": settings, "limit": limit}
    return run_isolated(job, isolate)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str = "median_slice_s") -> float:
    return float(a[key] / b[key])


def timing(
    test_image: Path,
    ckpt: str,
    scratch: Path,
    *,
    test_slices: int | None,
    subset_slices: int,
    big_shape: tuple[int, int, int] | None,
    big_slices: int,
    big_plain_slices: int,
    isolate: bool,
) -> dict[str, Any]:
    """Seconds, slices/s and peak RSS of the default and its alternatives (module docstring)."""
    default = inference_settings("default")
    jobs = {
        "default": ("predictor", default, test_slices),
        "plain": ("plain", default, test_slices),
        "tiled_previous_default": ("predictor", inference_settings("tiled"), subset_slices),
        "naive": ("predictor", inference_settings("naive"), subset_slices),
        "tta_flips": ("predictor", inference_settings("default", tta="flips"), subset_slices),
        "tta_d4": ("predictor", inference_settings("default", tta="d4"), subset_slices),
        "plain_subset": ("plain", default, subset_slices),
    }
    results = {
        name: _timed_pass(name, kind, test_image, ckpt, settings, limit, isolate)
        for name, (kind, settings, limit) in jobs.items()
    }
    plain, subset = results["plain"], results["plain_subset"]
    ratios = {
        "default_vs_plain_whole_volume": results["default"]["seconds"] / plain["seconds"],
        "default_vs_plain_median_slice": _ratio(results["default"], plain),
    }
    for name in ("tiled_previous_default", "naive", "tta_flips", "tta_d4"):
        ratios[f"{name}_vs_plain_median_slice"] = _ratio(results[name], subset)
    big = None
    if big_shape is not None:
        path = scratch / f"synthetic_{'x'.join(map(str, big_shape))}.tif"
        big = _big_volume(test_image, path, ckpt, big_shape, big_slices, big_plain_slices, isolate)
    return {"test": results, "ratios": ratios, "big": big}


def _big_volume(
    source: Path,
    path: Path,
    ckpt: str,
    shape: tuple[int, int, int],
    slices: int,
    plain_slices: int,
    isolate: bool,
) -> dict[str, Any]:
    """The default, plain and 1024-px-tile passes over a ``shape`` volume made from ``source``
    and written to ``path`` (deleted afterwards): memory and speed beyond the test volume."""
    log(f"inference: writing {path}")
    t0 = time.perf_counter()
    make_big_volume(source, path, shape)
    big: dict[str, Any] = {"write_s": time.perf_counter() - t0, "path": str(path)}
    default = inference_settings("default")
    jobs = (
        ("default", "predictor", slices, default),
        ("plain", "plain", plain_slices, default),
        ("tiles_1024", "predictor", slices, {**default, "tile_size": 1024, "overlap": 0.125}),
    )
    for name, kind, limit, settings in jobs:
        big[name] = _timed_pass(name, kind, path, ckpt, settings, limit, isolate)
    big["default_vs_plain_median_slice"] = _ratio(big["default"], big["plain"])
    big["tiles_1024_vs_plain_median_slice"] = _ratio(big["tiles_1024"], big["plain"])
    path.unlink()
    return big


def validation_quality(
    train_image: Path,
    train_mask: Path,
    val_slices: int,
    ckpt: str,
) -> dict[str, Any]:
    """fg IoU (threshold 0.5, pooled) of inference settings on the validation hold-out.

    The last ``val_slices`` slices of the training volume: the hold-out training selected the
    checkpoint on, never the test volume. Every variant gets a freshly loaded network (a
    predictor converts it to its own memory layout).
    """
    image, mask = read_pair(train_image, train_mask)
    image, mask = image[-val_slices:], mask[-val_slices:]
    variants = {
        "default (auto precision)": inference_settings("default"),
        "default fp32": inference_settings("default", precision="32-true"),
        "one window, 64-px border": inference_settings("default", border_pad=64),
        "one window, 16-px border": inference_settings("default", border_pad=16),
        "one window, no border": inference_settings("default", border_pad=0),
        "tiled (previous default)": inference_settings("tiled"),
        "tiled 512/0.25, 32-px border (forced)": inference_settings("tiled", border_pad=32),
        "tiled 1024/0.125, 32-px border (forced)": inference_settings(
            "tiled", border_pad=32, tile_size=1024, overlap=0.125
        ),
        "naive (report)": inference_settings("naive"),
    }
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        log(f"quality: {name} on {val_slices} validation slices")
        pipeline = pipeline_for(ckpt, {**settings, "device": "cpu"})
        predictor = pipeline.predictor
        t0 = time.perf_counter()
        probs = list(pipeline.probabilities(image))
        seconds = time.perf_counter() - t0
        metrics, _ = evaluate_volume(iter(probs), mask)
        results[name] = {
            "fg_iou": metrics["fg_iou"],
            "edge_fg_iou": metrics["edge_fg_iou"],
            "interior_fg_iou": metrics["interior_fg_iou"],
            "seconds": seconds,
            "precision": predictor.precision,
            "channels_last": predictor.channels_last,
        }
    base = results["default (auto precision)"]
    return {
        "slices": int(val_slices),
        "checkpoint": ckpt,
        "variants": results,
        "bf16_minus_fp32_fg_iou": base["fg_iou"] - results["default fp32"]["fg_iou"],
        "fp32_vs_auto_seconds": results["default fp32"]["seconds"] / base["seconds"],
        "default_minus_previous_fg_iou": base["fg_iou"]
        - results["tiled (previous default)"]["fg_iou"],
    }
