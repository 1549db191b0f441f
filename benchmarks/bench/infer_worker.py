"""One timed inference pass over a TIFF volume, meant to run in a fresh process so that its
peak RSS (``VmHWM``) is that of inference alone: ``python -m benchmarks.bench.infer_worker
'<json job>'`` prints one JSON line.

Two kinds of pass, same network, precision and memory layout (resolved by the inference
pipeline's :class:`~emseg.inference.VolumePredictor`):

* ``predictor``: :class:`~emseg.inference.InferencePipeline` with the given ``conf/inference``
  settings, streaming the file page by page (what ``eval.py`` / ``predict.py`` do);
* ``plain``: the bare minimum, one forward pass per slice (sides padded up to multiples of the
  network's stride only), sigmoid, nothing else: the baseline the pipeline's overhead is
  measured against.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks.bench.env import peak_rss_bytes
from emseg.data.dataset import context_slices
from emseg.hardware import set_torch_threads
from emseg.inference import (
    PRECISIONS,
    InferencePipeline,
    VolumePredictor,
    WindowSettings,
    load_checkpoint,
)
from emseg.inference.sliding_window import pad_to_multiple
from emseg.io import open_volume

__all__ = ["pipeline_for", "plain_pass", "run_job"]


def pipeline_for(ckpt: str, settings: dict[str, Any]) -> InferencePipeline:
    """The inference pipeline of a checkpoint with ``WindowSettings`` fields ``settings``."""
    return InferencePipeline(load_checkpoint(ckpt), WindowSettings(**settings))


@torch.inference_mode()
def plain_pass(predictor: VolumePredictor, slices: Any, limit: int) -> list[float]:
    """One bare forward pass per slice with the predictor's model, precision and layout."""
    model, pre = predictor.model, predictor.preprocessing
    dtype = PRECISIONS[predictor.precision]
    device = predictor.device
    seconds = []
    for z in range(limit):
        t0 = time.perf_counter()
        indices = context_slices(z, len(slices), pre.context)
        image = torch.from_numpy(np.stack([pre(slices[int(i)]) for i in indices]))[None]
        image, (height, width) = pad_to_multiple(image.to(device), predictor.stride)
        if predictor.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(image)
        probs = torch.sigmoid(logits[0, 0, :height, :width].float()).cpu().numpy()
        assert probs.shape == (height, width)
        seconds.append(time.perf_counter() - t0)
    return seconds


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job: ``{"kind": "predictor"|"plain", "input": tif, "ckpt": path,
    "settings": conf/inference overrides, "limit": slices|None, "threads": int|None}``."""
    set_torch_threads(job.get("threads"))
    settings = {"precision": "auto", "device": "cpu", **job.get("settings", {})}
    predictor = pipeline_for(job.get("ckpt"), settings).predictor
    with open_volume(job["input"]) as slices:
        depth = len(slices)
        limit = min(int(job["limit"]), depth) if job.get("limit") else depth
        t0 = time.perf_counter()
        if job["kind"] == "plain":
            seconds = plain_pass(predictor, slices, limit)
        else:
            seconds, last = [], time.perf_counter()
            for z, probs in enumerate(predictor.predict(slices)):
                assert probs.shape == slices.shape[1:]
                now = time.perf_counter()
                seconds.append(now - last)
                last = now
                if z + 1 >= limit:
                    break
        total = time.perf_counter() - t0
        shape = list(slices.shape)
    return {
        "kind": job["kind"],
        "volume_shape": shape,
        "slices": limit,
        "seconds": total,
        "slice_seconds": seconds,
        "first_slice_s": seconds[0],
        "median_slice_s": float(np.median(seconds[1:] if len(seconds) > 1 else seconds)),
        "slices_per_s": limit / total,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "settings": predictor.describe(),
    }


def main() -> None:
    """Run the job given as JSON in the first argument; print its result as one JSON line."""
    print(json.dumps(run_job(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
