"""What a block costs beyond the network: one block of the EPFL test volume, timed by parts.

Run from the repository root (after epfl_blockwise.py, which writes the Zarr input)::

    .venv/bin/python -m experiments.large_volumes.block_overhead \
        --ckpt /work/runs/fast/checkpoints/best-epoch025-fg_iou0.8744.ckpt \
        --input /tmp/lv_epfl/testing.zarr --out /tmp/lv_overhead

For the block z 80-89 (blocks of 10 slices; with the checkpoint's 3D median of 7 the network
predicts z 77-92, 16 slices), on one torch thread, at the checkpoint's precision:

* ``bare_forward_s``: the network alone on the 16 already-normalised 2.5D input stacks (the
  same tensors, layout and autocast as the pipeline's), no reading, padding or median;
* ``pipeline_block_s``: :meth:`InferencePipeline.block_probabilities` (read, normalise,
  forward, 3D median) for the block;
* ``median_s``: the 3D median alone: the block's 10 centres from its 16 probability slices;
* ``worker_block_s``: :func:`emseg.blockwise.worker.predict_block` (the above plus encoding
  and writing both arrays into a store), what a worker logs per block;
* the engine's own cost per block (daisy's scheduling, ~1 ms) is measured in README.md.

Each is the best of ``--repeat`` runs. Writes experiments/large_volumes/block_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from emseg.blockwise.worker import predict_block
from emseg.data.dataset import context_slices
from emseg.inference import build_pipeline
from emseg.inference.volume_predictor import PRECISIONS
from emseg.io import open_volume
from emseg.io.prediction_store import StoreLayout, create_prediction_store
from emseg.postprocess import median_filter_slices

ROOT = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def best(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"ckpt_path={args.ckpt}", "input=x", "output=y", "torch_threads=1"]
        cfg = compose(config_name="predict", overrides=overrides)
    pipeline = build_pipeline(cfg)
    z0, z1 = 80, 90
    with open_volume(str(args.input)) as source:
        radius = pipeline.median_footprint(source)[0] // 2
        predictor = pipeline.predictor
        pre = predictor.preprocessing_for(source)
        depth, context = len(source), predictor.preprocessing.context
        stacks = []
        for z in range(z0 - radius, z1 + radius):
            slices = [pre(np.asarray(source[int(i)])) for i in context_slices(z, depth, context)]
            x = torch.from_numpy(np.stack(slices))[None]
            if predictor.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            stacks.append(x)
        autocast = PRECISIONS[predictor.precision]

        @torch.inference_mode()
        def bare() -> None:
            with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=bool(autocast)):
                for x in stacks:
                    predictor.model(x)

        bare()  # warm-up
        assert len(stacks) == (z1 - z0) + 2 * radius, "the checkpoint's median was not applied"
        results = {
            "median_footprint": list(pipeline.median_footprint(source)),
            "cpu": cpu_name(),
            "precision": predictor.precision,
            "channels_last": predictor.channels_last,
            "threads": torch.get_num_threads(),
            "block": [z0, z1],
            "network_slices": len(stacks),
            "slice_shape": list(source.shape[1:]),
            "bare_forward_s": best(bare, args.repeat),
            "pipeline_block_s": best(
                lambda: pipeline.block_probabilities(source, z0, z1), args.repeat
            ),
        }
        footprint = pipeline.median_footprint(source)
        probs = list(predictor.predict(source, z0 - radius, z1 + radius))
        results["median_s"] = best(  # the block's own 10 centres, as the pipeline filters them
            lambda: list(median_filter_slices(iter(probs), footprint, 1, radius))[: z1 - z0],
            args.repeat,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        layout = StoreLayout(
            source.shape, (1, 256, 256), {"probabilities": "uint8", "mask": "uint8"}
        )
        store = create_prediction_store(args.out / "block.zarr", layout, {}, overwrite=True)
        box = (z0, z1, 0, source.shape[1], 0, source.shape[2])
        results["worker_block_s"] = best(
            lambda: predict_block(pipeline, source, store, box, "uint8"), args.repeat
        )
    results["beyond_network"] = results["worker_block_s"] / results["bare_forward_s"] - 1
    results["beyond_network_and_median"] = (
        results["worker_block_s"] - results["median_s"]
    ) / results["bare_forward_s"] - 1
    path = ROOT / "experiments/large_volumes/block_overhead.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
