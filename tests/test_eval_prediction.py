"""``eval.py prediction=<volume>``: an existing prediction scored without a checkpoint (issue 18).

The blockwise store that ``predict.py output=out.zarr`` writes for the synthetic test volume
scores exactly what ``eval.py ckpt_path=...`` scores when it predicts the volume itself (the
same pooled counts, hence every threshold metric); its 8-bit probabilities give the threshold
sweep. Stores built here with the store's own API (no model) cover the rest: masks, another
threshold, unfinished stores, bad input, and memory that does not grow with the depth.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from emseg.errors import ConfigError, DataError
from emseg.evaluate import run as run_eval
from emseg.io.prediction_store import StoreLayout, create_prediction_store
from emseg.predict import run as run_predict
from emseg.prediction_scores import score_prediction
from emseg.volume_scores import METRIC_KEYS
from tests.conftest import compose_cfg, run_script

SWEEP = ("best_threshold", "fg_iou_at_best_threshold")


def synthetic_prediction(depth: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 (Z, Y, X), labels uint8 {0, 255})``: noisy around the labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 4) ** 2)[None]
    labels = np.repeat(labels, depth, 0)
    probs = np.clip(labels * 0.7 + rng.normal(0.15, 0.2, labels.shape), 0, 1)
    return probs.astype(np.float32), labels.astype(np.uint8) * 255


def write_store(
    path: Path,
    probs: np.ndarray,
    threshold: float = 0.5,
    arrays: tuple[str, ...] = ("probabilities", "mask"),
    complete: bool = True,
    chunk_z: int = 1,
) -> Path:
    """A blockwise store as predict.py writes it: uint8 round(255 p), mask 0 / 255."""
    layout = StoreLayout(probs.shape, (chunk_z, *probs.shape[1:]), dict.fromkeys(arrays, "uint8"))
    store = create_prediction_store(path, layout, {"threshold": threshold, "input": "in.zarr"})
    blocks = {
        "probabilities": np.rint(probs * 255).astype(np.uint8),
        "mask": (probs > threshold).astype(np.uint8) * 255,
    }
    for name in arrays:  # whole-volume writes (the store's block API is the workers')
        zarr.open_array(str(path / name / "0"), mode="r+")[:] = blocks[name]
    if complete:
        store.mark_complete()
    return path


# --- the same numbers as eval.py's own prediction ---------------------------------------------


def test_a_blockwise_store_scores_exactly_like_the_checkpoint_path(
    tmp_path, tiny_checkpoint, synthetic_data_dir
):
    data = synthetic_data_dir / "epfl"
    labels = data / "testing_groundtruth.tif"
    common = ["torch_threads=1", "edge_band=8"]  # one thread: oneDNN rounds alike in both
    reference_dir = tmp_path / "checkpoint"
    overrides = [f"ckpt_path={tiny_checkpoint}", f"paths.data_dir={synthetic_data_dir}"]
    run_eval(compose_cfg("eval", [*overrides, *common, "save_predictions=true"], reference_dir))
    reference = json.loads((reference_dir / "metrics.json").read_text())

    store = tmp_path / "out.zarr"
    predict = [f"ckpt_path={tiny_checkpoint}", f"input={data / 'testing.tif'}", f"output={store}"]
    predict += ["torch_threads=1", "blockwise.block_slices=2", "blockwise.chunks=[1,48,48]"]
    assert run_predict(compose_cfg("predict", predict, tmp_path))["complete"]

    scored_dir = tmp_path / "prediction"
    scoring = [f"prediction={store}", f"data.test_mask={labels}", *common]
    run_eval(compose_cfg("eval", scoring, scored_dir))
    scored = json.loads((scored_dir / "metrics.json").read_text())
    assert scored["counts"] == reference["counts"]  # every voxel classified alike
    for key in set(METRIC_KEYS) - set(SWEEP):
        assert scored["metrics"][key] == reference["metrics"][key], key
    # The sweep: the stored round(255 p) against eval.py's float p (within a grid step).
    assert scored["metrics"]["best_threshold"] == pytest.approx(
        reference["metrics"]["best_threshold"], abs=0.011
    )
    assert scored["metrics"]["fg_iou_at_best_threshold"] == pytest.approx(
        reference["metrics"]["fg_iou_at_best_threshold"], abs=2e-3
    )
    assert scored["threshold"] == reference["threshold"] == 0.5
    assert scored["prediction"]["binary_from"] == "mask" and scored["prediction"]["complete"]
    assert scored["slices"] == reference["slices"] and scored["checkpoint"]

    # eval.py's own predictions.tif (uint8), scored as a prediction: the same sweep as the store
    tif_dir = tmp_path / "tif"
    tif = [f"prediction={reference_dir / 'predictions.tif'}", f"data.test_mask={labels}"]
    run_eval(compose_cfg("eval", [*tif, *common], tif_dir))
    from_tif = json.loads((tif_dir / "metrics.json").read_text())["metrics"]
    assert {k: from_tif[k] for k in SWEEP} == {k: scored["metrics"][k] for k in SWEEP}
    assert from_tif["fg_iou"] == pytest.approx(reference["metrics"]["fg_iou"], abs=1e-3)


# --- what is scored, and how ------------------------------------------------------------------


def test_masks_thresholds_and_plain_volumes(tmp_path):
    probs, labels = synthetic_prediction(6, 40)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    store = write_store(tmp_path / "out.zarr", probs, threshold=0.4)
    lab = str(tmp_path / "labels.tif")
    full = score_prediction(str(store), lab, edge_band=4)
    assert full.threshold == 0.4 and full.prediction["binary_from"] == "mask"  # the store's own
    truth = labels > 0
    pred = probs > 0.4
    assert full.counts["all"]["tp"] == int((pred & truth).sum())
    assert full.counts["all"]["fp"] == int((pred & ~truth).sum())

    mask = score_prediction(f"{store}/mask", lab, edge_band=4)
    assert mask.counts == full.counts and mask.threshold == 0.4
    assert all(mask.metrics[k] is None for k in SWEEP) and mask.metrics["fg_iou"] is not None
    with pytest.raises(ConfigError, match="cannot be thresholded again"):
        score_prediction(f"{store}/mask", lab, threshold=0.6, threshold_given=True)

    other = score_prediction(str(store), lab, threshold=0.6, threshold_given=True, edge_band=4)
    stored = np.rint(probs * 255).astype(np.uint8)
    assert other.threshold == 0.6 and other.prediction["arrays"] == ["probabilities"]
    assert other.counts["all"]["tp"] == int((stored / np.float32(255) > 0.6)[truth].sum())

    tifffile.imwrite(tmp_path / "p.tif", probs.astype(np.float16))  # float probabilities
    floats = score_prediction(str(tmp_path / "p.tif"), lab, threshold=0.4, edge_band=4)
    assert floats.counts["all"]["tp"] == int((probs.astype(np.float16) > 0.4)[truth].sum())

    tifffile.imwrite(tmp_path / "m.tif", (probs > 0.4).astype(np.uint8) * 255)  # a 0/255 mask
    plain = score_prediction(str(tmp_path / "m.tif"), lab, edge_band=4)
    assert plain.counts == full.counts and plain.threshold is None
    assert plain.prediction["scored_as"] == "mask" and plain.metrics["best_threshold"] is None

    limited = score_prediction(str(store), lab, limit_slices=2, extra_masks={"same": lab})
    assert limited.slices == 2 and limited.extra_masks["same"]["counts"] == limited.counts


def test_an_unfinished_store_is_refused_unless_allowed(tmp_path):
    probs, labels = synthetic_prediction(4, 32)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    store = write_store(tmp_path / "out.zarr", probs, complete=False)
    with pytest.raises(DataError, match="unfinished blockwise prediction.*allow_incomplete"):
        score_prediction(str(store), str(tmp_path / "labels.tif"))
    scored = score_prediction(str(store), str(tmp_path / "labels.tif"), allow_incomplete=True)
    assert scored.prediction["complete"] is False and scored.slices == 4


def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, capsys):
    probs, labels = synthetic_prediction(4, 32)
    lab = tmp_path / "labels.tif"
    tifffile.imwrite(lab, labels)
    store = write_store(tmp_path / "out.zarr", probs)
    tifffile.imwrite(tmp_path / "small.tif", labels[:, :16])
    tifffile.imwrite(tmp_path / "int.tif", labels.astype(np.int32))
    tifffile.imwrite(tmp_path / "ones.tif", (probs > 0.5).astype(np.uint8))
    zarr.create_array(str(tmp_path / "i.zarr"), data=labels.astype(np.uint16))
    cases = {
        "missing_file": ([f"prediction={tmp_path / 'gone.tif'}"], "gone.tif: file not found"),
        "missing_store": ([f"prediction={tmp_path / 'gone.zarr'}"], "store not found"),
        "missing_array": ([f"prediction={store}/probs"], "no array 'probs'.*probabilities, mask"),
        "shape": ([f"prediction={store}", f"data.test_mask={tmp_path / 'small.tif'}"], "shape"),
        "labels_gone": ([f"prediction={store}", "data.test_mask=/nope.tif"], "data.test_mask"),
        "dtype": ([f"prediction={tmp_path / 'i.zarr'}"], "dtype uint16"),
        "0-1 mask": ([f"prediction={tmp_path / 'ones.tif'}"], "only 0 and 1"),
        "checkpoint_too": ([f"prediction={store}", "ckpt_path=x.ckpt"], "give one of them"),
        "inference": ([f"prediction={store}", "inference.tta=flips"], "inference.tta does not"),
    }
    for name, (args, message) in cases.items():
        if not any(a.startswith("data.test_mask") for a in args):
            args = [*args, f"data.test_mask={lab}"]
        code, err = run_script("eval.py", args, tmp_path / name, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert re.search(message, lines[0]), (name, lines[0])
        assert not (tmp_path / name / "hydra" / "metrics.json").exists(), name
    with pytest.raises(DataError, match="prediction: .*int32"):  # no prediction dtype
        score_prediction(str(tmp_path / "int.tif"), str(lab))


def test_the_cli_writes_metrics_json(tmp_path, capsys):
    probs, labels = synthetic_prediction(4, 32)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    store = write_store(tmp_path / "out.zarr", probs)
    args = [f"prediction={store}", f"data.test_mask={tmp_path / 'labels.tif'}", "threshold=0.3"]
    code, err = run_script("eval.py", args, tmp_path, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "hydra" / "metrics.json").read_text())
    assert summary["threshold"] == 0.3 and summary["prediction"]["arrays"] == ["probabilities"]
    assert set(METRIC_KEYS) <= set(summary["metrics"])


# --- bounded memory ---------------------------------------------------------------------------


def test_memory_does_not_grow_with_the_depth(tmp_path):
    """Peak Python/numpy allocation while scoring a (Z, 128, 128) store: the same for Z = 4 and
    Z = 64 (a whole-volume read of the deeper one alone would be 1 MB uint8, 4 MB float)."""
    peaks = {}
    for depth in (4, 64):
        probs, labels = synthetic_prediction(depth, 128, seed=depth)
        store = write_store(tmp_path / f"d{depth}.zarr", probs)
        zarr.create_array(str(tmp_path / f"l{depth}.zarr"), data=labels, chunks=(1, 128, 128))
        tracemalloc.start()
        score_prediction(str(store), str(tmp_path / f"l{depth}.zarr"))
        peaks[depth] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[64] < 1.25 * peaks[4] + 256 * 1024, peaks
