"""A y / x region of a slice predicted with the whole slice's windows equals the whole slice's
prediction there, bit for bit (emseg/inference/slice_region.py), whatever the region: at the
slice's corners (mirrored border padding), inside one window, across seams, with padding wider
than the slice, a single-window slice, TTA and either blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg.errors import ConfigError
from emseg.inference.slice_region import axis_region, predict_region, region_axes
from emseg.inference.sliding_window import plan_slice, predict_slice, window_predictor
from emseg.inference.window import WindowSettings

# (height, width, tile, border_pad, blend): 4 x 6 windows; 4 x 9 with padding of 40; padding
# wider than the slice (mirrored repeatedly); a slice that is one window.
CASES = [
    (160, 230, 64, 16, "gaussian"),
    (97, 333, 64, 40, "constant"),
    (50, 61, 32, 60, "gaussian"),
    (120, 90, 512, 32, "gaussian"),
]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [
        torch.nn.Conv2d(3, 8, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 7, padding=3),
    ]
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("height,width,tile,pad,mode", CASES)
def test_regions_equal_the_whole_slice(net, height, width, tile, pad, mode):
    # Batches of one window: a convolution may round a window differently beside other
    # windows in its batch (the smp networks do not on this project's CPUs, a toy one can).
    window = WindowSettings(
        tile_size=tile, border_pad=pad, mode=mode, max_window_area=0, sw_batch_size=1,
        tta="flips" if height < 100 else "none",
    )  # fmt: skip
    rng = np.random.default_rng(height)
    image = torch.from_numpy(rng.standard_normal((3, height, width)).astype(np.float32))
    whole = predict_slice(net, image, window, stride=1)
    plan = plan_slice(height, width, window, 1)
    windows = window_predictor(
        net, stride=1, tta=window.tta, autocast_dtype=None, channels_last=False
    )
    regions = [((0, height), (0, width)), ((0, 1), (width - 1, width)), ((5, 9), (7, 8))]
    for _ in range(6):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        regions.append(((y0, int(rng.integers(y0 + 1, height + 1))), (x0, width)))
    for ys, xs in regions:
        ay, ax = region_axes(plan, ys, xs)
        read = image[:, slice(*ay.read), slice(*ax.read)]
        part = predict_region(windows, read, plan, (ay, ax), window)
        assert torch.equal(part, whole[slice(*ys), slice(*xs)]), (ys, xs)


def test_a_region_reads_only_the_input_under_its_windows():
    # Windows of 64 at 0, 59, 117, 176 over a 20 + 200 + 20 padded axis. Rows 100-109 (padded
    # 120-129) lie under the windows at 59 and 117: padded 59-180 = input rows 39-160.
    starts = (0, 59, 117, 176)
    middle = axis_region(200, 20, 64, starts, (100, 110))
    assert (middle.read, middle.offset, middle.starts) == ((39, 161), 59, (0, 58))
    assert (middle.pad_before, middle.pad_after, middle.crop) == (0, 0, (61, 71))
    # The first rows: the first window, over 20 mirrored rows (input 1-20) and input 0-43.
    top = axis_region(200, 20, 64, starts, (0, 5))
    assert (top.read, top.pad_before, top.offset, top.starts) == ((0, 44), 20, 0, (0,))
    bottom = axis_region(200, 20, 64, starts, (195, 200))
    assert (bottom.read, bottom.pad_after, bottom.offset) == ((156, 200), 20, 176)


def test_the_reports_disjoint_tiles_are_not_cut_into_regions():
    window = WindowSettings(tile_size=32, mode="naive", max_window_area=0)
    with pytest.raises(ConfigError, match="mode=naive cannot be predicted in y / x tiles"):
        region_axes(plan_slice(100, 100, window, 1), (0, 10), (0, 10))
