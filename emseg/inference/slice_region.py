"""A y / x region of a slice's sliding-window prediction, equal to the whole slice's there.

Blockwise prediction of slices too large to hold (a connectomics section of 50k x 50k pixels)
cuts them into y / x tiles. A tile must not be predicted as an image of its own: the windows
would fall elsewhere, the border padding would mirror the tile's edges, and the seams would
show. Instead the tile is predicted with the *whole slice's* windows
(:func:`~emseg.inference.sliding_window.plan_slice`) that overlap it:

1. along each axis, :func:`axis_region` keeps the windows that overlap the output range and
   finds the input range they cover (mapped back through the border padding: a window over the
   padded margin needs the pixels it mirrors);
2. the caller reads only that input (all 2.5D context slices), pads it where it touches the
   slice's edge exactly as the whole slice is padded, and :func:`predict_region` blends the
   kept windows in the whole slice's order.

Every output pixel then sums the same window predictions, with the same weights, in the same
order as in the whole-slice blend: the result is equal bit for bit, provided the network gives
a window the same values whatever other windows share its batch (measured on this project's
CPUs: experiments/large_volumes/README.md; a test checks it).

Written here because no library tiles a sliding-window blend this way: MONAI's and
pytorch_connectomics' inferers predict one array at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emseg.errors import ConfigError
from emseg.inference.sliding_window import (
    Predictor,
    SlicePlan,
    blend_windows,
    pad_border,
)
from emseg.inference.window import WindowSettings

__all__ = ["AxisRegion", "axis_region", "predict_region", "region_axes"]


@dataclass(frozen=True)
class AxisRegion:
    """One axis of a region: what to read and which windows to blend.

    Attributes:
        read: ``(start, stop)`` of the input to read, in the slice's (unpadded) pixels.
        pad_before, pad_after: border padding to add before / after the read input (the whole
            slice's ``border_pad`` where the read touches the slice's edge, else 0).
        offset: padded-slice coordinate of the first pixel of the padded read input.
        starts: the kept windows' starts in the padded read input (whole-slice order).
        crop: ``(start, stop)`` of the output range in the padded read input.
    """

    read: tuple[int, int]
    pad_before: int
    pad_after: int
    offset: int
    starts: tuple[int, ...]
    crop: tuple[int, int]


def axis_region(
    side: int, pad: int, window: int, starts: tuple[int, ...], out: tuple[int, int]
) -> AxisRegion:
    """The input and windows one axis of output range ``out`` (``[start, stop)``) needs.

    Args:
        side: the slice's length along the axis, before padding.
        pad: the border padding on each end.
        window: the window length (in the padded slice).
        starts: the whole slice's window starts (padded coordinates).
        out: the output range, in unpadded pixels, within ``[0, side)``.
    """
    out0, out1 = int(out[0]), int(out[1])
    if not 0 <= out0 < out1 <= side:
        raise ValueError(f"output range {out0}-{out1} is not within 0-{side}")
    p0, p1 = out0 + pad, out1 + pad
    kept = [s for s in starts if s < p1 and s + window > p0]
    first, end = min(kept), max(kept) + window
    read0, read1 = max(0, first - pad), min(side, end - pad)
    if pad >= side - 1:  # mirrored more than once (or replicated): the whole axis is needed
        read0, read1 = 0, side
    else:  # mirroring at an edge reads up to `pad` pixels inside it
        if read0 == 0:
            read1 = max(read1, pad + 1)
        if read1 == side:
            read0 = min(read0, side - 1 - pad)
    before = pad if read0 == 0 else 0
    after = pad if read1 == side else 0
    offset = read0 + pad - before
    return AxisRegion(
        read=(read0, read1),
        pad_before=before,
        pad_after=after,
        offset=offset,
        starts=tuple(s - offset for s in kept),
        crop=(p0 - offset, p1 - offset),
    )


def region_axes(
    plan: SlicePlan, ys: tuple[int, int], xs: tuple[int, int]
) -> tuple[AxisRegion, AxisRegion]:
    """The y and x :class:`AxisRegion` of output rows ``ys`` and columns ``xs`` of ``plan``.

    Raises:
        ConfigError: the report's disjoint tiling (``inference.mode=naive``) of a slice that
            is more than one window: its tiles are not windows of a blend.
    """
    if plan.naive:
        raise ConfigError(
            "inference.mode=naive cannot be predicted in y / x tiles (its disjoint tiles "
            "extend the slice); use mode=gaussian or whole-slice blocks (blockwise.block_yx=null)"
        )
    (window_y, window_x) = plan.window
    return (
        axis_region(plan.height, plan.pad, window_y, plan.starts_y, ys),
        axis_region(plan.width, plan.pad, window_x, plan.starts_x, xs),
    )


@torch.inference_mode()
def predict_region(
    windows: Predictor,
    image: torch.Tensor,
    plan: SlicePlan,
    axes: tuple[AxisRegion, AxisRegion],
    window: WindowSettings,
) -> torch.Tensor:
    """Probabilities of the output region of ``axes`` from its read input ``image``.

    Args:
        windows: the window predictor (:func:`~emseg.inference.sliding_window.window_predictor`).
        image: normalised float ``(C, h, w)``: the read ranges of ``axes`` of the slice and its
            2.5D neighbours.
        plan: the whole slice's plan.
        axes: from :func:`region_axes`.
        window: the inference settings (padding mode, blend mode, sigma, batch size).

    Returns:
        float32 ``(y1 - y0, x1 - x0)`` probabilities of the output region, on ``image.device``.
    """
    ay, ax = axes
    pad = (ax.pad_before, ax.pad_after, ay.pad_before, ay.pad_after)
    x = pad_border(image[None].float(), pad, window.padding_mode)
    if plan.single:
        blended = windows(x)
    else:
        corners = [(y, c) for y in ay.starts for c in ax.starts]
        # The padded read input can extend beyond the kept windows (mirrored pixels near an
        # edge); the blend only covers the windows, which cover the output.
        blended = blend_windows(
            x, windows, corners, plan.window, window.mode, window.sigma_scale, window.sw_batch_size
        )
    (y0, y1), (x0, x1) = ay.crop, ax.crop
    return blended[0, 0, y0:y1, x0:x1].float()
