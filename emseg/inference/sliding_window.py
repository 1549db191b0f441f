"""Sliding-window inference over one 2D (2.5D) slice, with Gaussian-blended windows.

The slice is first padded by ``border_pad`` pixels (reflected by default) so that the pixels
at the image border are not at a window's edge. Then:

* **one window** when the padded slice, its sides rounded up to multiples of the network's
  stride (:func:`model_stride`), has at most ``max_window_area`` pixels (or ``tile_size`` is
  ``None``): a single forward pass, no seams, no blending;
* **tiled** otherwise (memory must not grow with the slice): along each axis the fewest
  windows of at most ``tile_size`` pixels that overlap by at least ``overlap x tile_size``,
  all of one size and spread evenly from edge to edge (rather than MONAI's fixed stride, whose
  last window is pushed back over its neighbour and can double the work of a row), each
  weighted by a Gaussian centred on the window (``mode="gaussian"``) so pixels near a
  window's edge, where the network lacks context, count little wherever another window sees
  them from its centre. ``mode="constant"`` averages overlapping windows instead.

``mode="naive"`` is plain non-overlapping tiling with constant weights, for comparison: the
padded slice is extended (bottom/right) to a multiple of the tile and cut into disjoint tiles.

The Gaussian weight map (:func:`gaussian_weights`) is floored at 1e-8 of its peak only to keep
every pixel's total weight positive: MONAI's floor of 1e-3 lets the edge pixels of other
windows take a visible share of the blend where two seams cross (see the tests).

Written here rather than taken from MONAI's ``sliding_window_inference`` because of the
even window spread, the single-window fast path and the weight floor above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emseg.errors import ConfigError
from emseg.inference.tta import apply_tta
from emseg.inference.window import PAD_MODES, WindowSettings

__all__ = [
    "SlicePlan",
    "blend_windows",
    "gaussian_weights",
    "model_stride",
    "pad_border",
    "pad_to_multiple",
    "plan_axis",
    "plan_slice",
    "predict_slice",
    "window_predictor",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]

# Smallest blend weight relative to the peak: only keeps every pixel's total weight positive.
WEIGHT_FLOOR = 1e-8


def model_stride(net: nn.Module) -> int:
    """The factor the input height and width of ``net`` must be multiples of.

    A network may state it as ``net.output_stride`` (an ensemble: the least common multiple of
    its members'); smp models give it as ``net.encoder.output_stride`` (32 for a 5-stage
    encoder); a network without either (a plain convolution in the tests) takes any size.
    """
    own = getattr(net, "output_stride", None)
    if isinstance(own, int):
        return own
    encoder = getattr(net, "encoder", None)
    return int(getattr(encoder, "output_stride", 1))


@functools.lru_cache(maxsize=8)
def gaussian_weights(roi: tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian blend weights of a window, peak 1, floored at ``WEIGHT_FLOOR``.

    Args:
        roi: window ``(Y, X)`` in pixels.
        sigma_scale: sigma as a fraction of each window side.

    Returns:
        float32 ``(Y, X)`` CPU tensor (cached; do not modify).
    """
    axes = []
    for side in roi:
        coords = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        axes.append(torch.exp(-0.5 * (coords / (sigma_scale * side)) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    return (weights / weights.max()).clamp_min(WEIGHT_FLOOR).float()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple]:
    """Pad ``(N, C, Y, X)`` at the bottom/right so Y and X are multiples of ``multiple``.

    Reflect padding, or replicate when the image is too small to reflect. The training module
    uses the same function, so training, validation and inference pad alike.

    Returns:
        The padded tensor and the original ``(Y, X)`` to crop the output back to.
    """
    height, width = x.shape[-2:]
    pad_y = math.ceil(height / multiple) * multiple - height
    pad_x = math.ceil(width / multiple) * multiple - width
    if pad_y or pad_x:
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
    return x, (height, width)


def pad_border(
    x: torch.Tensor, pad: tuple[int, int, int, int], mode: str = "reflect"
) -> torch.Tensor:
    """Pad the last two axes of ``(N, C, Y, X)`` by ``(left, right, top, bottom)`` pixels.

    ``reflect`` pads wider than the image are done in steps (mirroring repeatedly, like
    ``numpy.pad``); a side of one pixel cannot be reflected and is replicated instead.
    """
    if mode not in PAD_MODES:
        raise ConfigError(f"inference.padding_mode must be one of {PAD_MODES}; got {mode!r}")
    if not any(pad):
        return x
    if mode != "reflect":
        return F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad, value=0.0)
    left, right, top, bottom = pad
    while left or right or top or bottom:
        height, width = x.shape[-2:]
        if height == 1 or width == 1:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (
            min(left, width - 1),
            min(right, width - 1),
            min(top, height - 1),
            min(bottom, height - 1),
        )
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (
            a - b for a, b in zip((left, right, top, bottom), step, strict=True)
        )
    return x


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple)) * multiple


def plan_axis(
    side: int, padded_side: int, tile_size: int | None, overlap: float, stride: int = 1
) -> tuple[int, list[int]]:
    """Window length and start offsets along one axis of the padded slice.

    One window covers the whole padded side when there is no tile, when the tile is at least
    the (unpadded) image side, or when the padded side fits in the tile. Otherwise: the fewest
    ``n`` windows of at most ``tile_size`` overlapping by at least ``ceil(overlap x tile)``,
    all of one length (rounded up to a multiple of ``stride`` where that still fits the tile,
    so the network needs no extra padding), with starts spread evenly from 0 to the far edge.

    Args:
        side: the slice's side before border padding.
        padded_side: the side after border padding.
        tile_size: maximum window length, or ``None`` for one window.
        overlap: minimum overlap of neighbouring windows as a fraction of ``tile_size``.
        stride: the network's input multiple (:func:`model_stride`).

    Returns:
        ``(window, starts)`` with ``starts[0] == 0`` and ``starts[-1] + window == padded_side``.
    """
    if tile_size is None or tile_size >= side or padded_side <= tile_size:
        return padded_side, [0]
    min_overlap = min(int(math.ceil(overlap * tile_size)), tile_size - 1)
    count = int(math.ceil((padded_side - min_overlap) / (tile_size - min_overlap)))
    needed = int(math.ceil((padded_side + (count - 1) * min_overlap) / count))
    rounded = _round_up(needed, stride)
    window = rounded if rounded <= tile_size else needed
    step = (padded_side - window) / (count - 1)
    return window, [round(i * step) for i in range(count)]


@dataclass(frozen=True)
class SlicePlan:
    """Where the windows of one ``(Y, X)`` slice lie, in the coordinates of the padded slice.

    Attributes:
        height, width: the slice before border padding.
        pad: ``border_pad`` on every side.
        window: ``(y, x)`` window size (the whole padded slice when ``single``).
        starts_y, starts_x: window start offsets along y and x; windows are taken in row-major
            order (every x start of the first y start, then the next y start...).
        single: one forward pass over the whole padded slice (no blending).
        naive: the report's disjoint tiling (``mode="naive"``), not expressed by the starts.
    """

    height: int
    width: int
    pad: int
    window: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    single: bool
    naive: bool = False

    @property
    def padded(self) -> tuple[int, int]:
        """``(Y, X)`` of the padded slice."""
        return self.height + 2 * self.pad, self.width + 2 * self.pad


def plan_slice(height: int, width: int, window: WindowSettings, stride: int) -> SlicePlan:
    """The windows :func:`predict_slice` uses for a ``height x width`` slice (module docstring)."""
    pad = int(window.border_pad)
    padded_y, padded_x = height + 2 * pad, width + 2 * pad
    tile = window.tile_size
    area = _round_up(padded_y, stride) * _round_up(padded_x, stride)
    if tile is None or area <= int(window.max_window_area):
        return SlicePlan(height, width, pad, (padded_y, padded_x), (0,), (0,), single=True)
    if window.mode == "naive":
        return SlicePlan(height, width, pad, (int(tile),) * 2, (), (), single=False, naive=True)
    window_y, starts_y = plan_axis(height, padded_y, int(tile), float(window.overlap), stride)
    window_x, starts_x = plan_axis(width, padded_x, int(tile), float(window.overlap), stride)
    single = len(starts_y) == len(starts_x) == 1
    return SlicePlan(
        height, width, pad, (window_y, window_x), tuple(starts_y), tuple(starts_x), single
    )


def window_predictor(
    model: nn.Module,
    *,
    stride: int,
    tta: str,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> Predictor:
    """Windows ``(N, C, y, x)`` -> probabilities ``(N, 1, y, x)`` (padded to the stride inside)."""
    return functools.partial(
        _window_probabilities,
        model,
        stride=stride,
        tta=tta,
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
    )


@torch.inference_mode()
def predict_slice(
    model: nn.Module,
    image: torch.Tensor,
    window: WindowSettings | None = None,
    *,
    stride: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Foreground probabilities of one normalised slice: one window, or blended windows.

    Args:
        model: maps float ``(N, C, y, x)`` (y, x multiples of ``stride``) to ``(N, 1, y, x)``
            logits; already in eval mode and on ``image.device``.
        image: normalised float ``(C, Y, X)``: the slice and its 2.5D neighbours as channels.
        window: placement, blending, border and TTA (:class:`WindowSettings`; its defaults
            when ``None``). Its ``precision`` and ``device`` are resolved by the caller
            (:class:`~emseg.inference.VolumePredictor`) into ``autocast_dtype`` and the
            devices of ``model`` and ``image``.
        stride: input multiple of the network; ``None`` reads it from ``model``.
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the network under
            autocast, ``None`` for float32.
        channels_last: feed the network channels_last tensors (faster with bf16 on CPU/GPU).

    Returns:
        float32 ``(Y, X)`` probabilities in [0, 1] on ``image.device``.
    """
    window = window or WindowSettings()
    stride = model_stride(model) if stride is None else int(stride)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, Y, X), got shape {tuple(image.shape)}")
    _, height, width = image.shape
    plan = plan_slice(height, width, window, stride)
    pad = plan.pad
    x = pad_border(image[None].float(), (pad, pad, pad, pad), window.padding_mode)
    windows = window_predictor(
        model,
        stride=stride,
        tta=window.tta,
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
    )
    if plan.single:
        blended = windows(x)
    elif plan.naive:
        blended = _disjoint_tiles(
            x, windows, int(window.tile_size), height, width, window.padding_mode
        )
    else:
        corners = [(y, c) for y in plan.starts_y for c in plan.starts_x]
        blended = blend_windows(
            x, windows, corners, plan.window, window.mode, window.sigma_scale, window.sw_batch_size
        )
    return blended[0, 0, pad : pad + height, pad : pad + width].float()


def _window_probabilities(
    model: nn.Module,
    tiles: torch.Tensor,
    *,
    stride: int,
    tta: str,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> torch.Tensor:
    """Probabilities ``(N, 1, y, x)`` of windows ``(N, C, y, x)``, averaged over ``tta``."""

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, stride)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            x.device.type,
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        ):
            logits = model(x)
        return torch.sigmoid(logits[:, :1, :height, :width].float())

    return apply_tta(probabilities, tiles, tta)


def blend_windows(
    x: torch.Tensor,
    windows: Predictor,
    corners: Sequence[tuple[int, int]],
    window: tuple[int, int],
    mode: str,
    sigma_scale: float,
    batch_size: int,
) -> torch.Tensor:
    """Weighted mean of the window predictions over the padded image ``x`` ``(1, C, Y, X)``.

    ``corners`` are the windows' ``(y, x)`` starts in ``x``, in the order they are summed (a
    pixel's sum adds its windows in this order, so a subset of a slice's windows in the same
    order gives the same values bit for bit: :mod:`emseg.inference.slice_region`). Every window
    is weighted, even a lone one, so that a region covered by one window of a tiled slice
    equals the whole-slice blend there.
    """
    window_y, window_x = window
    if mode == "gaussian":
        weight = gaussian_weights((window_y, window_x), sigma_scale).to(x.device)
    else:
        weight = torch.ones(window_y, window_x, device=x.device)
    total = x.new_zeros((1, 1, *x.shape[-2:]))
    norm = x.new_zeros(x.shape[-2:])
    for first in range(0, len(corners), batch_size):
        batch = corners[first : first + batch_size]
        tiles = torch.cat([x[..., y : y + window_y, c : c + window_x] for y, c in batch])
        probs = windows(tiles)
        for (y, c), prob in zip(batch, probs, strict=True):
            total[0, :, y : y + window_y, c : c + window_x] += prob * weight
            norm[y : y + window_y, c : c + window_x] += weight
    return total / norm


def _disjoint_tiles(
    x: torch.Tensor,
    windows: Predictor,
    tile_size: int,
    height: int,
    width: int,
    padding_mode: str,
) -> torch.Tensor:
    """The report's tiling: the padded slice extended to a multiple of the tile, cut into
    disjoint tiles (one window along an axis the tile covers), predicted tile by tile."""
    padded_y, padded_x = x.shape[-2:]
    roi_y = padded_y if tile_size >= height else min(tile_size, padded_y)
    roi_x = padded_x if tile_size >= width else min(tile_size, padded_x)
    x = pad_border(x, (0, -padded_x % roi_x, 0, -padded_y % roi_y), padding_mode)
    out = x.new_zeros((1, 1, *x.shape[-2:]))
    for y in range(0, x.shape[-2], roi_y):
        for c in range(0, x.shape[-1], roi_x):
            out[..., y : y + roi_y, c : c + roi_x] = windows(x[..., y : y + roi_y, c : c + roi_x])
    return out
