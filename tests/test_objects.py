"""emseg.objects on hand-made volumes whose instances, volumes and surface areas are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emseg.errors import ConfigError, DataError
from emseg.objects import InstanceSettings, instance_metrics, label_instances, measure_objects
from emseg.objects.instances import relabel_sequential
from emseg.objects.measure import summarize


def ball(shape, centre, radii) -> np.ndarray:
    """Boolean ellipsoid ``sum(((p - c) / r)^2) <= 1`` in a ``(Z, Y, X)`` grid."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Knud Thomsen's approximation (error <= 1.1 %)."""
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def two_touching_spheres(radius: int = 9, gap: float = 1.6) -> np.ndarray:
    """Two spheres of ``radius`` whose centres are ``gap * radius`` apart: one component."""
    shape = (2 * radius + 6, 2 * radius + 6, int(2 * radius + gap * radius) + 8)
    centre = shape[0] // 2, shape[1] // 2
    x0 = radius + 4
    first = ball(shape, (*centre, x0), (radius,) * 3)
    second = ball(shape, (*centre, x0 + gap * radius), (radius,) * 3)
    return first | second


def test_sphere_volume_and_area() -> None:
    radius, voxel = 10, 5.0  # nm
    mask = ball((28, 28, 28), (14, 14, 14), (radius,) * 3)
    labels = label_instances(mask)
    assert labels.dtype == np.uint32 and labels.max() == 1
    table = measure_objects(labels, (voxel,) * 3)
    r_um = radius * voxel / 1000
    assert table["voxels"][0] == mask.sum()
    assert table["volume_um3"][0] == pytest.approx(4 / 3 * math.pi * r_um**3, rel=0.02)
    assert table["surface_area_um2"][0] == pytest.approx(4 * math.pi * r_um**2, rel=0.03)
    assert table["sphericity"][0] == pytest.approx(1.0, abs=0.04)
    assert table["elongation"][0] == pytest.approx(1.0, abs=0.02)
    centroid = [table[k][0] for k in ("centroid_z", "centroid_y", "centroid_x")]
    assert centroid == pytest.approx([14, 14, 14])
    assert not table["touches_border"][0]
    assert table["z_extent"][0] == 2 * radius + 1


def test_ellipsoid_anisotropic_voxels() -> None:
    # semi-axes 4 x 12 x 18 voxels at 10 x 5 x 5 nm: 40 x 60 x 90 nm
    mask = ball((14, 30, 42), (7, 15, 21), (4, 12, 18))
    table = measure_objects(label_instances(mask), (10.0, 5.0, 5.0))
    a, b, c = 0.040, 0.060, 0.090
    assert table["volume_um3"][0] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.03)
    assert table["surface_area_um2"][0] == pytest.approx(ellipsoid_area(a, b, c), rel=0.04)
    assert table["major_axis_um"][0] == pytest.approx(2 * c, rel=0.05)
    assert table["minor_axis_um"][0] == pytest.approx(2 * a, rel=0.1)
    assert table["elongation"][0] == pytest.approx(c / a, rel=0.1)
    assert table["z_extent_um"][0] == pytest.approx(table["z_extent"][0] * 0.010)


def test_no_voxel_size_reports_voxels() -> None:
    labels = label_instances(ball((20, 20, 20), (10, 10, 10), (6, 6, 6)))
    table = measure_objects(labels, None)
    assert math.isnan(table["volume_um3"][0]) and math.isnan(table["surface_area_um2"][0])
    assert table["surface_area_vox2"][0] == pytest.approx(4 * math.pi * 36, rel=0.04)
    summary = summarize(table, labels.shape, None)
    assert summary["size_unit"] == "voxels" and "voxel size unknown" in summary["note"]
    assert summary["density_per_um3"] is None


def test_components_min_size_border_and_holes() -> None:
    volume = np.zeros((20, 30, 40), bool)
    volume[2:8, 2:8, 2:8] = True  # 216 voxels
    volume[10:12, 10:12, 10:12] = True  # 8 voxels: removed by min_size
    volume[12:20, 20:28, 30:38] = True  # touches the z border
    volume[15, 23, 33] = False  # a cavity, filled
    labels = label_instances(volume, InstanceSettings(min_size=10, fill_holes=True))
    assert labels.max() == 2
    table = measure_objects(labels, (5.0, 5.0, 5.0))
    assert list(table["voxels"]) == [216, 512]
    assert list(table["touches_border"]) == [False, True]
    summary = summarize(table, labels.shape, (5.0, 5.0, 5.0))
    assert summary["count"] == 2 and summary["count_interior"] == 1
    total = 20 * 30 * 40 * 125 / 1e9
    assert summary["density_per_um3"] == pytest.approx(2 / total)


@pytest.mark.parametrize("split", ["distance", "cores"])
def test_watershed_splits_two_touching_spheres(split: str) -> None:
    mask = two_touching_spheres()
    assert label_instances(mask).max() == 1  # one blob without the split
    distance = np.asarray(__import__("scipy.ndimage", fromlist=["x"]).distance_transform_edt(mask))
    probability = np.clip(distance / distance.max(), 0, 1).astype(np.float32)
    labels = label_instances(mask, InstanceSettings(split=split), probability)
    assert labels.max() == 2
    sizes = np.bincount(labels.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 0.02 * sizes.sum()
    assert (labels > 0).sum() == mask.sum()  # the split keeps every voxel


def test_split_keeps_a_single_sphere_whole() -> None:
    mask = ball((30, 30, 30), (15, 15, 15), (11, 11, 11))
    assert label_instances(mask, InstanceSettings(split="distance")).max() == 1


def test_gt_against_itself_is_perfect() -> None:
    truth = label_instances(two_touching_spheres(), InstanceSettings(split="distance"))
    truth[truth == 2] = 7  # ids need not be consecutive
    metrics = instance_metrics(truth, truth)
    for key in ("precision", "recall", "f1", "ap", "ap50", "ap75", "mean_matched_iou"):
        assert metrics[key] == pytest.approx(1.0), key
    assert (metrics["splits"], metrics["merges"]) == (0, 0)


def test_metrics_split_merge_and_ap() -> None:
    shape = (20, 20, 60)
    truth = np.zeros(shape, np.uint32)
    truth[5:15, 5:15, 2:12] = 1
    truth[5:15, 5:15, 20:30] = 2
    truth[5:15, 5:15, 40:50] = 3
    pred = np.zeros(shape, np.uint32)
    pred[5:15, 5:15, 2:6] = 1  # object 1 split in three (IoU 0.4, 0.3, 0.3)
    pred[5:15, 5:15, 6:9] = 2
    pred[5:15, 5:15, 9:12] = 4
    pred[5:15, 5:15, 20:50] = 3  # objects 2 and 3 merged (with the gap between them)
    metrics = instance_metrics(pred, truth)
    assert metrics["n_pred"] == 4 and metrics["n_true"] == 3
    assert metrics["tp"] == 0 and metrics["f1"] == 0 and metrics["ap"] == 0
    assert (metrics["splits"], metrics["merges"]) == (1, 1)
    pred[5:15, 5:15, 20:50] = 0
    pred[5:15, 5:15, 20:29] = 3  # IoU 0.9 with object 2
    metrics = instance_metrics(pred, truth)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (1, 3, 2)
    assert metrics["precision"] == pytest.approx(1 / 4) and metrics["recall"] == pytest.approx(
        1 / 3
    )
    assert metrics["mean_matched_iou"] == pytest.approx(0.9)
    # the match (900 voxels) ranks first by size: precision 1 up to recall 1/3 (34 of COCO's
    # 101 recall points), at IoU 0.5 ... 0.9 (9 of the 10 thresholds)
    assert metrics["ap50"] == pytest.approx(34 / 101)
    assert metrics["ap"] == pytest.approx(0.9 * 34 / 101)
    probability = np.where(pred == 3, 0.6, 0.9).astype(np.float32)  # now it ranks last
    ranked = instance_metrics(pred, truth, probability)
    assert ranked["score"] == "mean_probability"
    assert ranked["ap50"] == pytest.approx(34 / 101 / 4)


def test_empty_prediction() -> None:
    empty = np.zeros((4, 5, 6), np.uint32)
    table = measure_objects(empty, (5.0, 5.0, 5.0))
    assert len(table["id"]) == 0
    assert summarize(table, empty.shape, (5.0, 5.0, 5.0))["count"] == 0
    truth = empty.copy()
    truth[1, 1, 1] = 1
    metrics = instance_metrics(empty, truth)
    assert metrics["recall"] == 0 and metrics["ap"] == 0 and metrics["fn"] == 1


def test_bad_settings_and_inputs() -> None:
    with pytest.raises(ConfigError, match="objects.split"):
        InstanceSettings(split="magic")
    with pytest.raises(ConfigError, match="connectivity"):
        InstanceSettings(connectivity=4)
    with pytest.raises(ConfigError, match="cores"):
        label_instances(np.ones((3, 3, 3), bool), InstanceSettings(split="cores"))
    with pytest.raises(DataError, match="3D"):
        label_instances(np.ones((3, 3), bool))


def test_relabel_sequential() -> None:
    labels = np.array([[[0, 5, 5, 9], [2, 0, 9, 9]]])
    assert relabel_sequential(labels).tolist() == [[[0, 2, 2, 3], [1, 0, 3, 3]]]
