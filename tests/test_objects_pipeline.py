"""instances=true in eval.py / predict.py, and eval.py prediction= instances=true."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from emseg.errors import ConfigError
from emseg.evaluate import run as run_eval
from emseg.predict import run as run_predict
from tests.conftest import compose_cfg


def test_eval_instances_beside_pixel_metrics(tmp_path, tiny_checkpoint, synthetic_data_dir):
    overrides = [
        f"ckpt_path={tiny_checkpoint}",
        f"paths.data_dir={synthetic_data_dir}",
        "data=epfl",
        "limit_slices=4",
        "instances=true",
        "objects.split=distance",
    ]
    run_eval(compose_cfg("eval", overrides, tmp_path))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    instances = summary["instances"]
    assert instances["settings"]["split"] == "distance"
    assert 0 <= instances["ap"] <= 1 and 0 <= instances["f1"] <= 1
    assert instances["n_true"] > 0


def test_eval_prediction_of_the_labels_is_perfect(tmp_path, synthetic_data_dir):
    labels = synthetic_data_dir / "epfl" / "testing_groundtruth.tif"
    as_mask = tmp_path / "labels_255.tif"
    tifffile.imwrite(as_mask, (tifffile.imread(labels) > 0).astype(np.uint8) * 255)
    overrides = [f"prediction={as_mask}", f"data.test_mask={labels}", "instances=true"]
    run_eval(compose_cfg("eval", overrides, tmp_path))
    instances = json.loads((tmp_path / "metrics.json").read_text())["instances"]
    assert instances["n_true"] > 0 and instances["n_pred"] == instances["n_true"]
    for key in ("ap", "f1", "precision", "recall", "mean_matched_iou"):
        assert instances[key] == pytest.approx(1.0), key


def test_predict_writes_instances_and_table(tmp_path, tiny_checkpoint, synthetic_data_dir):
    image = tifffile.imread(synthetic_data_dir / "epfl" / "testing.tif")[:4]
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, image)
    overrides = [
        f"ckpt_path={tiny_checkpoint}",
        f"input={source}",
        f"output={tmp_path / 'probs.tif'}",
        "instances=true",
    ]
    result = run_predict(compose_cfg("predict", overrides, tmp_path))
    labels = tifffile.imread(tmp_path / "probs_instances.tif")
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert result["objects"]["table"] == str(tmp_path / "probs_objects.csv")
    summary = json.loads((tmp_path / "probs_objects_summary.json").read_text())
    assert summary["count"] == int(labels.max())
    assert (tmp_path / "probs_objects_volumes.png").exists()
    with pytest.raises(ConfigError, match="already exists"):  # before any prediction
        run_predict(
            compose_cfg(
                "predict",
                [
                    *overrides[:2],
                    f"output={tmp_path / 'p2.tif'}",
                    f"instances_output={tmp_path / 'probs_instances.tif'}",
                    "instances=true",
                ],
                tmp_path,
            )
        )
    assert not (tmp_path / "p2.tif").exists()
    zarr_out = [*overrides[:2], f"output={tmp_path / 'out.zarr'}", "instances=true"]
    with pytest.raises(ConfigError, match="objects.split=none"):  # the split is in memory only
        run_predict(compose_cfg("predict", [*zarr_out, "objects.split=distance"], tmp_path))
    assert not (tmp_path / "out.zarr").exists()
