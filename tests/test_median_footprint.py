"""Post-processing footprints in voxels per axis, and extents in nanometres (issue 17 item 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from emseg.errors import ConfigError
from emseg.inference import InferencePipeline
from emseg.inference.checkpoint import Checkpoint, load_checkpoint
from emseg.inference.pipeline import voxel_size_of
from emseg.inference.settings import apply_checkpoint_settings
from emseg.postprocess import (
    PostprocessSettings,
    median_above,
    median_filter_slices,
    median_filter_volume,
    median_voxels,
)
from tests.test_inference_settings import _eval_cfg


@pytest.mark.parametrize("depth", [1, 2, 6])
@pytest.mark.parametrize("footprint", [(1, 3, 3), (3, 1, 5), (5, 3, 1), (3, 5, 5), (1, 1, 1)])
def test_per_axis_streamed_median_equals_scipy(depth, footprint):
    volume = np.random.default_rng(depth).random((depth, 11, 13)).astype(np.float32)
    expected = ndimage.median_filter(volume, size=footprint, mode="nearest")
    np.testing.assert_array_equal(median_filter_volume(volume, footprint), expected)


@pytest.mark.parametrize("footprint", [(3, 3, 3), (1, 3, 5), (5, 1, 3), (1, 1, 1), 5, 0])
def test_thresholded_median_by_majority_equals_the_median_filter(footprint):
    """The settings search's majority vote is the median filter thresholded, voxel for voxel:
    ties at the threshold (probabilities on a 0.05 grid), anisotropic footprints, and the
    volume's ends (a footprint deeper than the 4 slices)."""
    rng = np.random.default_rng(7)
    volume = (rng.integers(0, 21, (4, 19, 23)) / 20).astype(np.float32)
    filtered = median_filter_volume(volume, footprint)
    for threshold in (0.3, 0.5, 0.55, 0.75):
        above = median_above(volume, footprint, threshold)
        assert above.dtype == bool
        np.testing.assert_array_equal(above, filtered > threshold)
    with pytest.raises(ValueError, match="odd"):
        median_above(volume, (3, 2, 3), 0.5)


def test_per_axis_median_in_row_blocks_on_threads_equals_scipy(monkeypatch):
    import emseg.postprocess as postprocess

    monkeypatch.setattr(postprocess, "MEDIAN_BLOCK_ELEMENTS", 3 * 15 * 13)  # 3 rows a block
    volume = np.random.default_rng(3).random((5, 17, 13)).astype(np.float32)
    expected = ndimage.median_filter(volume, size=(1, 3, 5), mode="nearest")
    np.testing.assert_array_equal(median_filter_volume(volume, [1, 3, 5], threads=2), expected)


def test_an_even_side_is_refused():
    with pytest.raises(ValueError, match="odd"):
        list(median_filter_slices(iter(np.zeros((2, 4, 4), np.float32)), (1, 2, 3)))
    with pytest.raises(ConfigError, match="postprocess.median_size"):
        PostprocessSettings(median_size=[1, 4, 5])


@pytest.mark.parametrize(
    ("extent", "voxel", "expected"),
    [
        (35, (5, 5, 5), (7, 7, 7)),  # EPFL: isotropic 5 nm
        (35, (50, 5, 5), (1, 7, 7)),  # thick sections: no z-extent
        ([100, 30, 30], (40, 6, 6), (3, 5, 5)),  # 2.5 -> 3, 5 -> 5
        (10, (5, 5, 5), (3, 3, 3)),  # 2 is halfway between 1 and 3: up
        (9.9, (5, 5, 5), (1, 1, 1)),  # 1.98: nearer 1
        (1, (5, 5, 5), (1, 1, 1)),  # less than a voxel: off
    ],
)
def test_nanometres_to_odd_voxels_per_axis(extent, voxel, expected):
    assert median_voxels(extent, voxel) == expected
    assert PostprocessSettings(median_nm=extent).footprint(voxel) == expected


def test_an_extent_in_nanometres_needs_a_voxel_size():
    with pytest.raises(ConfigError, match="no voxel size is known"):
        PostprocessSettings(median_nm=35).footprint(None)
    with pytest.raises(ConfigError, match="median_nm must be positive"):
        PostprocessSettings(median_nm=-3)
    with pytest.raises(ConfigError, match="both give the median"):
        PostprocessSettings(median_size=3, median_nm=35)
    assert PostprocessSettings(median_size=5).footprint(None) == (5, 5, 5)


def _pipeline(config: dict, post: PostprocessSettings) -> InferencePipeline:
    checkpoint = Checkpoint(net=None, preprocessing=None, config=config, path=Path("x.ckpt"))
    return InferencePipeline(checkpoint, postprocess=post)  # type: ignore[arg-type]


class _Slices:
    """A ``(Z, Y, X)`` array that records a voxel size, as emseg.io sources do."""

    def __init__(self, array: np.ndarray, voxel_size=None) -> None:
        self.array, self.voxel_size = array, voxel_size

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, z: int) -> np.ndarray:
        return self.array[z]


def test_the_checkpoints_voxel_size_wins_over_the_volumes():
    post = PostprocessSettings(median_nm=35)
    volume = _Slices(np.zeros((3, 8, 8), np.uint8), voxel_size=(5.0, 5.0, 5.0))
    assert _pipeline({"data": {}}, post).median_footprint(volume) == (7, 7, 7)
    trained = {"data": {"voxel_size": [50.0, 5.0, 5.0]}}
    assert _pipeline(trained, post).median_footprint(volume) == (1, 7, 7)
    assert voxel_size_of({"data": {"voxel_size": None}}, volume) == (5.0, 5.0, 5.0)
    with pytest.raises(ConfigError, match="no voxel size"):
        _pipeline({"data": {}}, post).probabilities(_Slices(volume.array))  # at once


def test_the_median_in_nanometres_filters_as_its_voxel_footprint(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    # The volume's voxel size decides here: the tiny run's data (epfl.yaml) records 5 nm.
    checkpoint.config["data"]["voxel_size"] = None
    image = np.random.default_rng(0).integers(0, 256, (5, 40, 48), dtype=np.uint8)
    volume = _Slices(image, voxel_size=(30.0, 6.0, 6.0))
    by_nm = InferencePipeline(checkpoint, postprocess=PostprocessSettings(median_nm=30))
    by_voxels = InferencePipeline(
        checkpoint, postprocess=PostprocessSettings(median_size=[1, 5, 5])
    )
    plain = np.stack(list(InferencePipeline(checkpoint).probabilities(volume)))
    filtered = np.stack(list(by_nm.probabilities(volume)))
    np.testing.assert_array_equal(filtered, np.stack(list(by_voxels.probabilities(volume))))
    np.testing.assert_array_equal(
        filtered, ndimage.median_filter(plain, size=(1, 5, 5), mode="nearest")
    )


def test_a_median_size_on_the_command_line_replaces_the_checkpoints_median_nm():
    block = {"evaluation": {"postprocess": {"median_size": 0, "median_nm": 35.0}}}
    cfg = _eval_cfg(["postprocess.median_size=3"])
    assert apply_checkpoint_settings(cfg, block, ["postprocess.median_size=3"]) == {}
    assert cfg.postprocess.median_size == 3 and cfg.postprocess.median_nm is None
    cfg = _eval_cfg([])
    applied = apply_checkpoint_settings(cfg, block, [])
    assert applied == {"postprocess.median_size": 0, "postprocess.median_nm": 35.0}


def test_the_stream_can_start_at_a_later_centre():
    # A block's leading z context is filtered by the block that owns it: starting at centre k
    # gives exactly the whole stream's slices from k on, for every k (also past the end).
    volume = np.random.default_rng(2).random((7, 6, 5)).astype(np.float32)
    whole = np.stack(list(median_filter_slices(iter(volume), (5, 3, 3))))
    for first in range(0, 9):
        part = list(median_filter_slices(iter(volume), (5, 3, 3), 1, first))
        assert len(part) == max(0, 7 - first)
        if part:
            np.testing.assert_array_equal(np.stack(part), whole[first:])
    off = list(median_filter_slices(iter(volume), 1, 1, 3))
    np.testing.assert_array_equal(np.stack(off), volume[3:])
