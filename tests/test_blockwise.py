"""Blockwise prediction into one OME-Zarr store (issue 18): identical to predict.py, resumable.

A tiny checkpoint with 2.5D context 1 and a 3x3x3 median (halo 2 slices) predicts an 11-slice
volume in blocks of 2 slices (the last one shorter): bit-identical to the single-process
``predict.py`` output on the CPU, whether the blocks run in one go on two workers, or half in
one run and the rest in the next; a block that cannot be read is retried, reported by its z
range and leaves the store incomplete until a rerun does exactly the missing blocks (here on
"SLURM" workers: a stand-in ``srun`` that runs the worker command it is given).
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import zarr
from omegaconf import DictConfig

from emseg.blockwise import BlockPlan, BlockwiseSettings
from emseg.blockwise.plan import block_yx_of
from emseg.blockwise.roi import parse_roi
from emseg.blockwise.run import predict_blockwise, run_directory
from emseg.blockwise.slurm import SlurmSettings, srun_command
from emseg.blockwise.worker import BlockWorker, halve_yx, predict_block
from emseg.errors import ConfigError, DataError
from emseg.inference import build_pipeline
from emseg.io import open_volume
from emseg.io.encoding import probabilities_as
from emseg.io.prediction_store import StoreLayout, create_prediction_store, open_prediction_store
from emseg.predict import run as run_predict
from tests.conftest import TINY_OVERRIDES, compose_cfg, compose_train, make_volume, run_script

DEPTH, SIZE = 11, 48
POST = ["postprocess.median_size=3", "inference.precision=32-true"]
# Stands in for SLURM's srun: logs its arguments, then runs the command after the options.
FAKE_SRUN = """#!/bin/sh
echo "$*" >> "$SRUN_LOG"
while [ $# -gt 0 ]; do
  case "$1" in --*) shift;; *) break;; esac
done
exec "$@"
"""


def compose_predict(overrides: list[str], tmp_path: Path) -> DictConfig:
    return compose_cfg("predict", overrides, tmp_path)


@pytest.fixture(scope="module")
def context_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    """A two-step tiny run with ``data.context=1`` (3 input channels)."""
    from emseg.train import run as run_train

    run_dir = tmp_path_factory.mktemp("context_run")
    extra = ["logger=none", "test_after_fit=false", "data.context=1"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    run_train(compose_train([*TINY_OVERRIDES, *extra], run_dir, synthetic_data_dir))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def volume_and_reference(tmp_path_factory, context_checkpoint) -> tuple[Path, Path, dict]:
    """A Zarr input (one chunk per slice) and predict.py's own TIFF outputs of it."""
    root = tmp_path_factory.mktemp("blockwise_input")
    image, _ = make_volume(depth=DEPTH, size=SIZE, seed=3)
    source = root / "in.zarr"
    zarr.create_array(str(source), data=image, chunks=(1, SIZE, SIZE))
    overrides = [f"ckpt_path={context_checkpoint}", f"input={source}", *POST]
    overrides += [f"output={root / 'p.tif'}", f"mask_output={root / 'm.tif'}"]
    run_predict(compose_predict(overrides, root))
    reference = {
        "probabilities": tifffile.imread(root / "p.tif"),
        "mask": tifffile.imread(root / "m.tif"),
    }
    return context_checkpoint, source, reference


def blockwise_cfg(checkpoint: Path, source: Path, output: Path, *extra: str) -> DictConfig:
    overrides = [f"ckpt_path={checkpoint}", f"input={source}", f"output={output}", *POST]
    overrides += ["blockwise.block_slices=2", "blockwise.chunks=[1,32,32]"]
    # One thread per worker: two busy cores make OpenMP's spinning threads crawl.
    threads = [] if any(e.startswith("blockwise.workers") for e in extra) else ["torch_threads=1"]
    overrides += [*threads, *extra]
    return compose_predict(overrides, output.parent)


def stored(output: Path) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(zarr.open_array(str(output / name / "0"))[:])
        for name in ("probabilities", "mask")
    }


# --- plan, settings ---------------------------------------------------------------------


def test_blocks_cover_the_volume_with_their_halo():
    plan = BlockPlan(volume=(11, 48, 40), block_slices=4, chunk_z=2, halo=2)
    assert list(plan) == [(0, 4, 0, 48, 0, 40), (4, 8, 0, 48, 0, 40), (8, 11, 0, 48, 0, 40)]
    assert len(plan) == 3 and plan.whole_slices()
    assert [plan.read_range(*b[:2]) for b in plan] == [(0, 6), (2, 10), (6, 11)]
    with pytest.raises(ConfigError, match="multiple of the chunks' z size 2"):
        BlockPlan(volume=(11, 48, 40), block_slices=3, chunk_z=2)
    # A region of interest in y / x tiles: boxes in the volume's voxels, the last ones clipped.
    roi = ((2, 9), (10, 100), (0, 90))
    tiles = BlockPlan((11, 100, 90), 4, 2, 2, roi=roi, block_yx=(32, 64))
    assert tiles.grid == (2, 3, 2) and len(list(tiles)) == 6 * 2 and not tiles.whole_slices()
    assert list(tiles)[:3] == [(2, 6, 10, 42, 0, 64), (2, 6, 10, 42, 64, 90), (2, 6, 42, 74, 0, 64)]
    assert list(tiles)[-1] == (6, 9, 74, 100, 64, 90)
    assert tiles.read_range(6, 9) == (4, 11)  # the halo reaches outside the region


def test_block_yx_settings_are_whole_slices_or_chunk_aligned_tiles():
    assert block_yx_of("auto", (768, 1024), (256, 256)) == (768, 1024)
    assert block_yx_of("auto", (20000, 9000), (256, 256)) == (2048, 2048)
    assert block_yx_of(None, (20000, 9000), (256, 256)) == (20000, 9000)
    assert block_yx_of(600, (20000, 700), (256, 256)) == (768, 700)
    assert block_yx_of([300, 512], (20000, 9000), (100, 256)) == (300, 512)
    for bad in (0, -5, True, [1, 2, 3], "big", [256, 1.5]):
        with pytest.raises(ConfigError, match="blockwise.block_yx must be"):
            block_yx_of(bad, (100, 100), (1, 1))


def test_a_roi_is_parsed_in_voxels_or_world_units():
    shape, voxel = (100, 200, 300), (40.0, 5.0, 5.0)
    whole = ((0, 100), (0, 200), (0, 300))
    assert parse_roi(None, "voxel", shape, None) == whole
    assert parse_roi([[10, 20], None, [5, 300]], "voxel", shape, None) == (
        (10, 20), (0, 200), (5, 300)
    )  # fmt: skip
    # 0.1-0.5 um of z at 40 nm: voxels 2 (80-120 nm) to 12 (the one holding 480-500 nm).
    assert parse_roi([[0.1, 0.5], [0, 1], None], "um", shape, voxel) == (
        (2, 13), (0, 200), (0, 300)
    )  # fmt: skip
    assert parse_roi([[0, 4000], None, None], "nm", shape, voxel)[0] == (0, 100)
    errors = {
        "roi: z 90-120 .* outside the volume's 0-100": ([[90, 120], None, None], "voxel", voxel),
        "roi: y 50-50 .* empty": ([None, [50, 50], None], "voxel", voxel),
        "roi_unit=nm: the input records no voxel size": ([None, None, None], "nm", None),
        "roi_unit must be one of voxel, nm, um": (None, "mm", voxel),
        "roi must be three": ([[0, 1]], "voxel", voxel),
        "the x range must be": ([None, None, 5], "voxel", voxel),
        "voxel ranges must be integers": ([[0.5, 3], None, None], "voxel", voxel),
    }
    for message, (roi, unit, size) in errors.items():
        with pytest.raises(ConfigError, match=message):
            parse_roi(roi, unit, shape, size)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="blockwise.workers"):
        BlockwiseSettings(workers=0)
    with pytest.raises(ConfigError, match="unknown key"):
        BlockwiseSettings.from_config({"worker": 2})
    assert BlockwiseSettings(workers=2).threads_per_worker(cpus=8) == 4
    with pytest.raises(ConfigError, match="blockwise.launcher must be one of local, slurm"):
        BlockwiseSettings(launcher="pbs")
    with pytest.raises(ConfigError, match="blockwise.slurm: unknown key"):
        BlockwiseSettings(slurm={"gpus": 1})


def test_local_gpu_workers_take_one_visible_gpu_each(monkeypatch):
    import torch

    from emseg.blockwise.run import _gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = DictConfig({"inference": {"device": "auto"}})
    assert _gpus(cfg, 2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert _gpus(cfg, 2) == ["3", "5", "6"]  # worker i takes gpus[worker_id % 3]
    with pytest.raises(ConfigError, match="blockwise.workers=4 but only 3 GPU"):
        _gpus(cfg, 4)
    assert _gpus(DictConfig({"inference": {"device": "cpu"}}), 4) == []


def test_a_slurm_worker_is_one_srun_job_with_its_resources(tmp_path):
    slurm = SlurmSettings(partition="gpu", time="2:00:00", cpus_per_worker=6, mem="48G")
    slurm = SlurmSettings(**{**slurm.__dict__, "srun_args": ["--account=lab"]})
    command = srun_command(slurm, tmp_path / "worker.json", python="/env/bin/python")
    assert command == [
        "srun", "--ntasks=1", "--cpus-per-task=6", "--time=2:00:00", "--job-name=emseg-predict",
        "--gpus-per-task=1", "--partition=gpu", "--mem=48G", "--account=lab",
        "/env/bin/python", "-m", "emseg.blockwise.worker", str(tmp_path / "worker.json"),
    ]  # fmt: skip
    worker = BlockWorker({"ckpt_path": "c.ckpt"}, "/in.zarr/raw", "/out.zarr", "uint8")
    assert BlockWorker.from_json(worker.to_json(tmp_path / "worker.json")) == worker


# --- the pipeline's blocks --------------------------------------------------------------------


def test_a_block_of_the_pipeline_equals_the_same_slices_of_the_whole_volume(
    volume_and_reference, tmp_path
):
    checkpoint, source, _ = volume_and_reference
    cfg = compose_predict([f"ckpt_path={checkpoint}", "input=x", "output=y", *POST], tmp_path)
    pipeline = build_pipeline(cfg)
    with open_volume(source) as volume:
        assert pipeline.z_halo(volume) == 2  # context 1 + the median's z radius 1
        whole = np.stack(list(pipeline.probabilities(volume)))
        for z0, z1 in [(0, 1), (0, 3), (1, 2), (4, 7), (9, 11), (10, 11)]:
            np.testing.assert_array_equal(
                pipeline.block_probabilities(volume, z0, z1), whole[z0:z1]
            )


# Slices of 48 x 48 tiled into 32 x 32 windows (5 x 5 over the padded slice), one per batch.
TILED = ["inference.max_window_area=0", "inference.tile_size=32", "inference.sw_batch_size=1"]


def test_a_tile_of_the_pipeline_equals_the_same_voxels_of_the_whole_volume(
    volume_and_reference, tmp_path
):
    checkpoint, source, _ = volume_and_reference
    overrides = [f"ckpt_path={checkpoint}", "input=x", "output=y", *POST, *TILED, "torch_threads=1"]
    pipeline = build_pipeline(compose_predict(overrides, tmp_path))
    with open_volume(source) as volume:
        whole = np.stack(list(pipeline.probabilities(volume)))
        for (z0, z1), ys, xs in [
            ((0, 2), (0, 16), (0, 48)),  # a corner: mirrored padding, the median's edge
            ((4, 7), (16, 40), (8, 40)),  # inside: windows and median from around the tile
            ((10, 11), (47, 48), (0, 1)),
        ]:
            tile = pipeline.block_probabilities(volume, z0, z1, (ys, xs))
            np.testing.assert_array_equal(tile, whole[z0:z1, slice(*ys), slice(*xs)])


def test_tiles_write_every_pyramid_level_as_the_whole_volume_halved(tmp_path):
    # A stand-in pipeline returns its box of a known float volume; tiles of 16 x 16 (chunks of
    # 8 x 8: halved twice, 2 x 2) with odd ends must give each level as the whole volume's
    # 2 x 2 means, and the OME scale / translation of each level.
    volume = np.random.default_rng(1).random((3, 37, 29)).astype(np.float32)

    class Stub:
        threshold = 0.5

        def block_probabilities(self, source, z0, z1, region=None):
            (y0, y1), (x0, x1) = region or ((0, 37), (0, 29))
            return volume[z0:z1, y0:y1, x0:x1]

    voxel = (40.0, 4.0, 4.0)
    layout = StoreLayout((3, 37, 29), (1, 8, 8), {"probabilities": "uint8", "mask": "uint8"},
                         voxel, (0.0, 0.0, 0.0), levels=3)  # fmt: skip
    store = create_prediction_store(tmp_path / "p.zarr", layout, {})
    plan = BlockPlan((3, 37, 29), 1, 1, 0, block_yx=(16, 16))
    for box in plan:
        predict_block(Stub(), SimpleNamespace(shape=(3, 37, 29)), store, box, "uint8")
    expected = volume
    for level in range(3):
        stored_level = zarr.open_array(str(tmp_path / "p.zarr" / "probabilities" / str(level)))
        np.testing.assert_array_equal(stored_level[:], probabilities_as(expected, "uint8"))
        mask = zarr.open_array(str(tmp_path / "p.zarr" / "mask" / str(level)))[:]
        np.testing.assert_array_equal(mask, (expected > 0.5) * 255)
        expected = halve_yx(expected)
    assert stored_level.shape == (3, 10, 8) and stored_level.chunks == (1, 2, 2)
    ome = zarr.open_group(str(tmp_path / "p.zarr" / "mask")).attrs["ome"]["multiscales"][0]
    scale, shift = ome["datasets"][2]["coordinateTransformations"]
    assert scale["scale"] == [40.0, 16.0, 16.0] and shift["translation"] == [0.0, 6.0, 6.0]
    with pytest.raises(ConfigError, match="pyramid=4: the chunks' y / x sizes"):
        StoreLayout((3, 37, 29), (1, 8, 8), levels=5)


# --- blockwise runs on daisy ------------------------------------------------------------------


@pytest.mark.slow  # ~13 s; the failing-block test below runs two workers too
def test_two_workers_write_exactly_what_predict_py_writes(volume_and_reference, tmp_path):
    checkpoint, source, reference = volume_and_reference
    output = tmp_path / "out.ome.zarr"
    result = run_predict(blockwise_cfg(checkpoint, source, output, "blockwise.workers=2"))
    assert result["complete"] and result["blocks"] == 6 and result["blocks_done"] == 6
    assert result["halo"] == 2 and result["threads_per_worker"] >= 1
    for name, expected in stored(output).items():
        np.testing.assert_array_equal(expected, reference[name], err_msg=name)
    logs = sorted(p.name for p in (run_directory(output) / "logs").rglob("worker_*.err"))
    assert len(logs) == 2  # one process per worker, each loading the model once
    with open_volume(output / "mask") as mask:  # what eval.py / napari open
        assert mask.shape == (DEPTH, SIZE, SIZE)


@pytest.mark.slow  # ~12 s; the failed-blocks test below resumes a partial store too
def test_an_interrupted_run_is_finished_by_the_same_command(volume_and_reference, tmp_path):
    checkpoint, source, reference = volume_and_reference
    output = tmp_path / "out.zarr"
    cfg = blockwise_cfg(checkpoint, source, output)
    partial = predict_blockwise(cfg, skip=[False, True, False, True, True, False])
    assert partial["blocks_done"] == 3 and not partial["complete"]
    with pytest.raises(DataError, match="not complete"):
        open_volume(output / "probabilities")
    rest = run_predict(blockwise_cfg(checkpoint, source, output))
    assert (rest["blocks_done"], rest["blocks_skipped"], rest["complete"]) == (3, 3, True)
    for name, expected in stored(output).items():
        np.testing.assert_array_equal(expected, reference[name], err_msg=name)
    with pytest.raises(ConfigError, match="already exists"):
        run_predict(blockwise_cfg(checkpoint, source, output))


def test_failed_blocks_are_retried_reported_and_redone_alone_by_slurm_workers(
    volume_and_reference, tmp_path, capsys, monkeypatch
):
    checkpoint, source, reference = volume_and_reference
    broken = tmp_path / "in.zarr"
    zarr.create_array(
        str(broken), data=np.asarray(zarr.open_array(str(source))[:]), chunks=(1, SIZE, SIZE)
    )
    chunk = broken / "c" / "9" / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a chunk")  # slice 9: read by the blocks z 6-7, 8-9 and 10
    output = tmp_path / "out.zarr"
    args = [
        f"ckpt_path={checkpoint}",
        f"input={broken}",
        f"output={output}",
        *POST,
        "progress=false",
    ]
    args += ["blockwise.block_slices=2", "blockwise.chunks=[1,32,32]", "torch_threads=1"]
    args += ["blockwise.workers=2", "blockwise.max_retries=1"]
    code, err = run_script("predict.py", args, tmp_path, capsys)
    assert code == 2, err
    assert re.search(
        r"^error: 3 of 6 blocks not done: failed z 6-7 y 0-47 x 0-47, z 8-9 y 0-47 x 0-47, "
        r"z 10-10 y 0-47 x 0-47 after 1 ",
        err,
        re.M,
    )
    assert not open_prediction_store(output, "r").complete
    logs = list((run_directory(output) / "logs").rglob("worker_*.err"))
    assert len(logs) == 2  # one process per worker, each loading the model once
    text = "".join(p.read_text() for p in logs)
    # each failing block tried twice; a block reads its whole input box at once
    assert len(re.findall(r"cannot read slices \d+-(9|10) .*corrupt", text)) == 3 * 2
    assert text.count("no block left; peak RSS of this worker") == 2
    chunk.write_bytes(good)
    # The rerun on "SLURM": a stand-in srun records its options and runs the worker command.
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text(FAKE_SRUN)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SRUN_LOG", str(tmp_path / "srun.log"))
    slurm = ["blockwise.launcher=slurm", "blockwise.slurm.cpus_per_worker=1"]
    slurm += ["blockwise.slurm.gpus_per_worker=0", "blockwise.slurm.partition=debug"]
    slurm += ["blockwise.slurm.host=127.0.0.1"]
    rest = run_predict(blockwise_cfg(checkpoint, broken, output, *slurm))
    assert (rest["blocks_done"], rest["blocks_skipped"], rest["complete"]) == (3, 3, True)
    # 3 blocks from two local workers, 3 from the SLURM worker: all as predict.py wrote them
    for name, expected in stored(output).items():
        np.testing.assert_array_equal(expected, reference[name], err_msg=name)
    (job,) = (tmp_path / "srun.log").read_text().splitlines()  # one worker, one job
    assert job.startswith("--ntasks=1 --cpus-per-task=1 --time=04:00:00 ")
    assert "--partition=debug" in job and "--gpus-per-task" not in job
    assert job.endswith(f"-m emseg.blockwise.worker {run_directory(output) / 'worker.json'}")


def test_a_roi_in_tiles_equals_the_same_voxels_of_predict_py(volume_and_reference, tmp_path):
    checkpoint, source, _ = volume_and_reference
    reference = tmp_path / "whole.tif"
    overrides = [f"ckpt_path={checkpoint}", f"input={source}", f"output={reference}", *POST]
    run_predict(compose_predict([*overrides, *TILED, "torch_threads=1"], tmp_path))
    output = tmp_path / "roi.zarr"
    extra = [*TILED, "roi=[[2,9],[8,48],null]", "blockwise.block_yx=[32,32]"]
    extra += ["blockwise.chunks=[1,16,16]"]
    result = run_predict(blockwise_cfg(checkpoint, source, output, *extra))
    assert result["complete"] and result["blocks"] == 4 * 2 * 2
    expected = tifffile.imread(reference)[2:9, 8:48, :]
    np.testing.assert_array_equal(stored(output)["probabilities"], expected)
    ome = zarr.open_group(str(output / "probabilities")).attrs["ome"]["multiscales"][0]
    assert ome["datasets"][0]["coordinateTransformations"][1]["translation"] == [2, 8, 0]


def test_a_dry_run_times_one_block_and_writes_nothing(volume_and_reference, tmp_path, capsys):
    checkpoint, source, _ = volume_and_reference
    output = tmp_path / "out.zarr"
    report = run_predict(blockwise_cfg(checkpoint, source, output, "blockwise.dry_run=true"))
    assert (report["blocks"], report["halo"]) == (6, 2)
    assert report["timed_block"] == [6, 8, 0, SIZE, 0, SIZE]
    assert report["read_slices"] == 6 and report["block_seconds"] > 0
    assert report["estimated_seconds"] == pytest.approx(6 * report["block_seconds"])
    assert report["peak_rss_mib"] > 50
    assert "dry run: 6 blocks of 2x48x48 voxels, z halo 2" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no store, no lock, no run directory


# --- refusals -----------------------------------------------------------------------------------


def test_bad_blockwise_runs_are_refused_before_any_block(volume_and_reference, tmp_path):
    checkpoint, source, _ = volume_and_reference
    output = tmp_path / "out.zarr"
    with pytest.raises(ConfigError, match="mask_output"):
        run_predict(blockwise_cfg(checkpoint, source, output, f"mask_output={tmp_path / 'm.tif'}"))
    with pytest.raises(ConfigError, match="min_size"):
        run_predict(blockwise_cfg(checkpoint, source, output, "postprocess.min_size=5"))
    with pytest.raises(ConfigError, match="multiple of the chunks"):
        run_predict(blockwise_cfg(checkpoint, source, output, "blockwise.chunks=[4,32,32]"))
    with pytest.raises(ConfigError, match="block_slices=1 is smaller than the halo of 2"):
        run_predict(blockwise_cfg(checkpoint, source, output, "blockwise.block_slices=1"))
    narrow = [*TILED, "blockwise.block_yx=16", "blockwise.chunks=[1,16,16]"]
    with pytest.raises(ConfigError, match=r"block_yx=\[16, 16\] is smaller than .* tile"):
        run_predict(blockwise_cfg(checkpoint, source, output, *narrow))
    with pytest.raises(ConfigError, match="roi: x 40-60 .* outside the volume's 0-48"):
        run_predict(blockwise_cfg(checkpoint, source, output, "roi=[null,null,[40,60]]"))
    with pytest.raises(ConfigError, match="roi_unit=um: the input records no voxel size"):
        run_predict(
            blockwise_cfg(checkpoint, source, output, "roi=[[0,1],null,null]", "roi_unit=um")
        )
    with pytest.raises(ConfigError, match="roi: a region of interest is predicted into a Zarr"):
        run_predict(blockwise_cfg(checkpoint, source, tmp_path / "p.tif", "roi=[[0,1],null,null]"))
    with pytest.raises(ConfigError, match="names an array inside .*out.zarr; give the store"):
        run_predict(blockwise_cfg(checkpoint, source, output / "probabilities"))
    with pytest.raises(ConfigError, match="output: cannot write to /sys"):  # even as root
        run_predict(blockwise_cfg(checkpoint, source, Path("/sys/out.zarr")))
    assert not output.exists()
    layout = StoreLayout((DEPTH, SIZE, SIZE), (1, 32, 32), {"probabilities": "uint8"})
    create_prediction_store(output, layout, {"threshold": 0.5})  # an unfinished other run
    with pytest.raises(ConfigError, match="unfinished prediction with another layout"):
        run_predict(blockwise_cfg(checkpoint, source, output))
    run_directory(output).mkdir(exist_ok=True)
    with open(run_directory(output) / "lock", "a+") as lock:  # another run holds the lock
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another run is writing"):
            run_predict(blockwise_cfg(checkpoint, source, output, "overwrite=true"))


def test_instances_of_a_store_equal_those_of_predict_py(volume_and_reference, tmp_path):
    """output=<store>.zarr instances=true: the objects blockwise, as in memory from the TIFF."""
    from emseg.objects import label_instances

    checkpoint, source, reference = volume_and_reference
    output = tmp_path / "out.zarr"
    extra = ["instances=true", "objects_blockwise.block_shape=[4,32,32]"]
    extra += ["objects_blockwise.chunks=[2,32,32]"]
    result = run_predict(blockwise_cfg(checkpoint, source, output, *extra))
    assert result["complete"] and result["object_count"] > 0
    labels = zarr.open_group(str(output / "instances"), mode="r")["0"][:]
    expected = label_instances(reference["probabilities"].astype(np.float32) / 255 > 0.5)
    np.testing.assert_array_equal(labels, expected)
    table = (tmp_path / "out_objects.csv").read_text()
    assert table.count("\n") == int(expected.max()) + 1
