"""Stream a ``(Z, Y, X)`` volume slice by slice through sliding-window inference.

Only the ``2 * context + 1`` slices a prediction needs are held in memory, so memory stays
bounded whatever the volume's depth; a lazy :class:`~emseg.io.VolumeSource` reads each slice
when it is first needed. A checkpoint trained with ``data.percentiles`` has its percentiles
measured on each volume first (:func:`whole_volume`: the whole image behind a z-range view or
crop, as training measured its images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
from torch import nn

from emseg.data.dataset import context_slices
from emseg.data.normalization import Preprocessing
from emseg.errors import ConfigError
from emseg.hardware import auto_channels_last, auto_precision
from emseg.inference.slice_region import predict_region, region_axes
from emseg.inference.sliding_window import (
    model_stride,
    plan_slice,
    predict_slice,
    window_predictor,
)
from emseg.inference.window import WindowSettings
from emseg.io.source import VolumeSource, ZRange

__all__ = [
    "PRECISIONS",
    "Region",
    "PrefetchedBox",
    "SliceSource",
    "read_region",
    "shape_of",
    "VolumePredictor",
    "resolve_device",
    "resolve_precision",
    "whole_volume",
]

log = logging.getLogger(__name__)
# ((y0, y1), (x0, x1)): rows and columns of a slice, stop exclusive.
Region = tuple[tuple[int, int], tuple[int, int]]
# Accepted spellings of inference.precision and the autocast dtype each one means.
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
}


class SliceSource(Protocol):
    """Indexable by slice: a ``(Z, Y, X)`` numpy array or an :class:`~emseg.io.VolumeSource`."""

    def __len__(self) -> int: ...

    def __getitem__(self, z: int) -> np.ndarray: ...


def whole_volume(slices: SliceSource) -> SliceSource:
    """The volume whose percentiles normalise ``slices``: the whole source behind a view.

    A z-range view or a y / x crop (anything with a ``source`` attribute, e.g.
    :class:`emseg.io.source.ZRange`) stands for its source's image, whose percentiles training
    measured (``EMDataModule.intensity_range``); anything else is its own volume.
    """
    source = getattr(slices, "source", None)
    return slices if source is None else source


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"inference.device: invalid device {device!r} ({err})") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"inference.device={device} but CUDA is not available; use auto or cpu")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """The Lightning-style precision string to run with: ``auto`` follows the hardware.

    ``auto`` is ``bf16-mixed`` on CPUs with native bf16 and on bf16-capable GPUs,
    ``16-mixed`` on older GPUs, ``32-true`` otherwise (see :mod:`emseg.hardware`).
    """
    precision = str(precision)
    if precision == "auto":
        return auto_precision("gpu" if device.type == "cuda" else "cpu")
    if precision not in PRECISIONS:
        choices = ", ".join(["auto", *PRECISIONS])
        raise ConfigError(f"inference.precision must be one of {choices}; got {precision!r}")
    return precision


class VolumePredictor:
    """Foreground probabilities of a volume, one slice at a time.

    Args:
        model: network mapping ``(N, C, y, x)`` to ``(N, 1, y, x)`` logits, in eval mode; moved
            to the resolved device (and to channels_last where that is faster).
        preprocessing: the checkpoint's normalisation and 2.5D context.
        window: the inference settings (``conf/inference``); their defaults when ``None``.
    """

    def __init__(
        self, model: nn.Module, preprocessing: Preprocessing, window: WindowSettings | None = None
    ) -> None:
        self.window = window or WindowSettings()
        self.device = resolve_device(str(self.window.device))
        self.precision = resolve_precision(str(self.window.precision), self.device)
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        self.channels_last = auto_channels_last(self.precision, accelerator)
        self.preprocessing = preprocessing
        # id(volume) -> (volume, its bound preprocessing): each volume is measured once.
        self._bound: dict[int, tuple[SliceSource, Preprocessing]] = {}
        self.stride = model_stride(model)
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, object]:
        """The effective settings (resolved device and precision), for logs and metrics.json."""
        settings = {**self.window.as_dict(), "channels_last": self.channels_last}
        return {**settings, "precision": self.precision, "device": str(self.device)}

    def preprocessing_for(self, slices: SliceSource) -> Preprocessing:
        """The preprocessing of ``slices``: the checkpoint's, with the percentiles of
        :func:`whole_volume` measured (once per volume) when it was trained with them."""
        if self.preprocessing.percentiles is None:
            return self.preprocessing
        volume = whole_volume(slices)
        if id(volume) not in self._bound:
            name = str(getattr(volume, "path", "") or "the input volume")
            self._bound[id(volume)] = (volume, self.preprocessing.for_volume(volume, name))
        return self._bound[id(volume)][1]

    def predict(
        self,
        slices: SliceSource,
        start: int = 0,
        stop: int | None = None,
        region: Region | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the probability slice of every ``z`` in ``start .. stop - 1``, in order.

        Args:
            slices: ``(Z, Y, X)`` source; slice ``z`` is read when first needed and dropped
                once no later prediction uses it (at most ``2 * context + 1`` are held).
            start: first slice to predict.
            stop: one past the last (``None``: the volume's depth). Each slice takes its 2.5D
                context from the whole volume (clamped at the volume's ends, not the range's),
                so a range equals the same slices of a whole-volume prediction; only slices
                ``start - context .. stop - 1 + context`` are read.
            region: ``((y0, y1), (x0, x1))``: predict only these rows and columns, with the
                whole slice's windows (:mod:`emseg.inference.slice_region`), reading only the
                input those windows cover; equal to the same pixels of the whole slice.

        Yields:
            float32 ``(Y, X)`` (or the region's ``(y1 - y0, x1 - x0)``) foreground
            probabilities in [0, 1].
        """
        depth = len(slices)
        context = self.preprocessing.context
        preprocessing = self.preprocessing_for(slices)
        read, predict = self._slice_reader(slices, region)
        cache: dict[int, np.ndarray] = {}
        end = depth if stop is None else min(depth, int(stop))
        for z in range(max(0, int(start)), end):
            indices = context_slices(z, depth, context)
            for index in list(cache):
                if index < indices[0]:
                    del cache[index]
            for index in indices:
                if int(index) not in cache:
                    cache[int(index)] = preprocessing(read(int(index)))
            stack = np.stack([cache[int(index)] for index in indices])
            image = torch.from_numpy(stack).to(self.device)
            yield predict(image).cpu().numpy()

    def input_box(
        self, slices: SliceSource, start: int, stop: int, region: Region | None = None
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The ``(z, y, x)`` ranges of input that :meth:`predict` reads for these arguments:
        the slices with their 2.5D context, and the rows / columns under the windows of
        ``region`` (all of them without a region)."""
        depth, height, width = shape_of(slices)
        context = self.preprocessing.context
        zs = (max(0, int(start) - context), min(depth, int(stop) + context))
        if region is None:
            return zs, (0, height), (0, width)
        axes = region_axes(plan_slice(height, width, self.window, self.stride), *region)
        return zs, axes[0].read, axes[1].read

    def _slice_reader(
        self, slices: SliceSource, region: Region | None
    ) -> tuple[Callable[[int], np.ndarray], Callable[[torch.Tensor], torch.Tensor]]:
        """How to read slice ``z``'s input and predict it: whole slices, or a region's input."""
        autocast = PRECISIONS[self.precision]
        if region is None:
            return (
                lambda z: np.asarray(slices[z]),
                lambda image: predict_slice(
                    self.model,
                    image,
                    self.window,
                    stride=self.stride,
                    autocast_dtype=autocast,
                    channels_last=self.channels_last,
                ),
            )
        _, height, width = shape_of(slices)
        plan = plan_slice(height, width, self.window, self.stride)
        axes = region_axes(plan, *region)
        (y0, y1), (x0, x1) = axes[0].read, axes[1].read
        windows = window_predictor(
            self.model,
            stride=self.stride,
            tta=self.window.tta,
            autocast_dtype=autocast,
            channels_last=self.channels_last,
        )
        return (
            lambda z: read_region(slices, z, (y0, y1), (x0, x1)),
            lambda image: predict_region(windows, image, plan, axes, self.window),
        )


def shape_of(slices: SliceSource) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of a source, without reading a slice when it knows its shape."""
    shape = getattr(slices, "shape", None)
    if shape is None:
        first = np.asarray(slices[0])
        shape = (len(slices), *first.shape)
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


class PrefetchedBox:
    """A source with one box of it read ahead into memory: a block's whole input in one read.

    Slice-wise reads of a store chunked deeper than one slice (16 x 512 x 512, 64^3...) would
    decompress every chunk once per slice (and per 2.5D neighbour); a block instead reads its
    input box once (:meth:`~emseg.inference.InferencePipeline.block_probabilities`). Reads
    inside the box are served from memory, anything else from ``source``; ``source``,
    ``shape``, ``path`` and ``voxel_size`` are the source's (percentiles and footprints are
    measured on the whole volume, as without the box).

    Args:
        source: the ``(Z, Y, X)`` volume.
        box: ``((z0, z1), (y0, y1), (x0, x1))`` to hold.
    """

    def __init__(self, source: SliceSource, box: tuple[tuple[int, int], ...]) -> None:
        self.source = source
        self.shape = shape_of(source)
        self.path = getattr(source, "path", None)
        self.voxel_size = getattr(source, "voxel_size", None)
        self.box = tuple((int(a), int(b)) for a, b in box)
        (z0, z1), ys, xs = self.box
        if isinstance(source, VolumeSource):
            self.data = np.asarray(source.read(slice(z0, z1), slice(*ys), slice(*xs)))
        else:
            self.data = np.stack([read_region(source, z, ys, xs) for z in range(z0, z1)])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        return self.read_region(int(z), (0, self.shape[1]), (0, self.shape[2]))

    def read_region(self, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        """Rows ``ys`` and columns ``xs`` of slice ``z``, from memory when inside the box."""
        (z0, z1), (y0, y1), (x0, x1) = self.box
        if z0 <= z < z1 and y0 <= ys[0] and ys[1] <= y1 and x0 <= xs[0] and xs[1] <= x1:
            return self.data[z - z0, ys[0] - y0 : ys[1] - y0, xs[0] - x0 : xs[1] - x0]
        return read_region(self.source, z, ys, xs)


def read_region(
    slices: SliceSource, z: int, ys: tuple[int, int], xs: tuple[int, int]
) -> np.ndarray:
    """Rows ``ys`` and columns ``xs`` (``[start, stop)``) of slice ``z`` of ``slices``.

    A :class:`~emseg.io.VolumeSource` (or a z-range view of one) reads only that part from its
    file (the chunks of a Zarr / HDF5 / N5 array it touches); anything else is indexed.
    """
    y, x = slice(*ys), slice(*xs)
    if isinstance(slices, PrefetchedBox):
        return slices.read_region(int(z), ys, xs)
    if isinstance(slices, ZRange):
        return np.asarray(slices.source.read(slices.start + int(z), y, x))
    if isinstance(slices, VolumeSource):
        return np.asarray(slices.read(int(z), y, x))
    if isinstance(slices, np.ndarray):
        return slices[int(z), y, x]
    return np.asarray(slices[int(z)])[y, x]
