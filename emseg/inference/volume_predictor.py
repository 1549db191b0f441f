"""Stream a ``(Z, Y, X)`` volume slice by slice through sliding-window inference.

Only the ``2 * context + 1`` slices a prediction needs are held in memory, so memory stays
bounded whatever the volume's depth, and the slices of a TIFF are read page by page
(:class:`TiffSlices`) instead of loading the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile
import torch
from torch import nn

from emseg.data.dataset import context_slices
from emseg.data.volume import tifffile_errors
from emseg.errors import ConfigError, DataError, require_file
from emseg.hardware import auto_channels_last, auto_precision
from emseg.inference.checkpoint import Preprocessing
from emseg.inference.sliding_window import (
    DEFAULT_MAX_WINDOW_AREA,
    check_window_args,
    predict_slice,
)

__all__ = [
    "PRECISIONS",
    "SliceSource",
    "TiffSlices",
    "VolumePredictor",
    "resolve_device",
    "resolve_precision",
]

log = logging.getLogger(__name__)

_SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)
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
    """Anything indexable by slice: a ``(Z, Y, X)`` numpy array or a :class:`TiffSlices`."""

    def __len__(self) -> int: ...

    def __getitem__(self, z: int) -> np.ndarray: ...


class TiffSlices:
    """Lazy ``(Z, Y, X)`` view of a 2D or 3D grayscale TIFF: ``slices[z]`` reads one page.

    A 2D image is one slice (``ndim`` stays 2 so outputs can keep the input's shape). Files
    whose series is not stored one page per slice (rare) are memory-mapped when uncompressed
    and read whole otherwise.

    Args:
        path: TIFF file of dtype uint8, uint16 or float.

    Raises:
        DataError: missing, empty or unreadable file, RGB or >3D data, unsupported dtype.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path = Path(path)
        require_file(path, DataError)
        with tifffile_errors() as errors:
            try:
                self._tif = tifffile.TiffFile(path)
                series = self._tif.series[0]
                shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            except Exception as err:  # tifffile raises many types for non-TIFF data
                raise DataError(
                    f"{path}: not a readable TIFF ({type(err).__name__}: {err})"
                ) from err
        if errors:  # e.g. a truncated file: tifffile logs the broken page chain, never raises
            self.close()
            raise DataError(f"{path}: corrupt or truncated TIFF ({errors[0]})")
        # Same rule as emseg.data.volume.read_volume: (Y, X, 3|4) is RGB(A), not a volume.
        # (A (3|4, Y, X) stack, which tifffile may store as planar samples, is a volume.)
        rgb = len(shape) == 3 and shape[-1] in (3, 4)
        if len(shape) not in (2, 3) or rgb:
            hint = " (looks like RGB/multi-channel; convert it to grayscale)" if rgb else ""
            self.close()
            raise DataError(
                f"{path}: image must be 2D (Y, X) or 3D (Z, Y, X), got shape {shape}{hint}"
            )
        if dtype.type not in _SUPPORTED_DTYPES:
            self.close()
            raise DataError(
                f"{path}: unsupported image dtype {dtype}; expected uint8, uint16 or float"
            )
        if 0 in shape:
            self.close()
            raise DataError(f"{path}: image is empty, shape {shape}")
        self.ndim = len(shape)
        self.shape: tuple[int, int, int] = (1, *shape) if len(shape) == 2 else shape
        self.dtype = dtype
        self._pages = series.pages if len(series.pages) == self.shape[0] else None
        self._array: np.ndarray | None = None
        if self._pages is None:
            try:
                self._array = tifffile.memmap(path, mode="r").reshape(self.shape)
            except ValueError:
                log.warning("%s: slices are not stored page by page; reading it whole", path)
                self._array = self._tif.asarray().reshape(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        """Slice ``z`` as a ``(Y, X)`` array of the file's dtype."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} out of range for {self.shape[0]} slices")
        if self._array is not None:
            page = np.asarray(self._array[z])
        else:
            try:
                page = self._pages[z].asarray()
            except Exception as err:
                raise DataError(
                    f"{self.path}: cannot read slice {z} ({type(err).__name__}: {err})"
                ) from err
            page = page.reshape(self.shape[1:])
        if page.dtype.kind == "f" and not np.isfinite(page).all():
            raise DataError(f"{self.path}: slice {z} contains NaN or Inf values")
        return page

    def close(self) -> None:
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> TiffSlices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """Foreground probabilities of a volume, one slice at a time (config: ``conf/inference``).

    Args:
        model: network mapping ``(N, C, y, x)`` to ``(N, 1, y, x)`` logits, in eval mode.
        preprocessing: the checkpoint's normalisation and 2.5D context.
        tile_size, overlap, mode, sigma_scale, border_pad, padding_mode, sw_batch_size, tta,
            max_window_area: see :func:`emseg.inference.sliding_window.predict_slice`. The
            defaults are ``conf/inference/default.yaml``'s: one window per slice up to 1024^2
            padded pixels, 512-px Gaussian-blended tiles beyond, a 32-px reflected border.
        precision: ``auto`` | ``32-true`` | ``bf16-mixed`` | ``16-mixed`` (or ``32``/``bf16``/
            ``16``): autocast dtype of the network.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
    """

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        tile_size: int | None = 512,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        border_pad: int = 32,
        padding_mode: str = "reflect",
        sw_batch_size: int = 2,
        tta: str = "none",
        max_window_area: int = DEFAULT_MAX_WINDOW_AREA,
        precision: str = "auto",
        device: str = "auto",
    ) -> None:
        check_window_args(
            tile_size,
            overlap,
            mode,
            sigma_scale,
            border_pad,
            padding_mode,
            sw_batch_size,
            tta,
            max_window_area,
        )
        self.device = resolve_device(str(device))
        self.precision = resolve_precision(str(precision), self.device)
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        self.channels_last = auto_channels_last(self.precision, accelerator)
        self.preprocessing = preprocessing
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.window_kwargs = {
            "tile_size": None if tile_size is None else int(tile_size),
            "overlap": float(overlap),
            "mode": str(mode),
            "sigma_scale": float(sigma_scale),
            "border_pad": int(border_pad),
            "padding_mode": str(padding_mode),
            "sw_batch_size": int(sw_batch_size),
            "tta": str(tta),
            "max_window_area": int(max_window_area),
            "autocast_dtype": PRECISIONS[self.precision],
            "channels_last": self.channels_last,
        }

    def describe(self) -> dict[str, object]:
        """The effective settings (resolved device and precision), for logs and metrics.json."""
        settings = {k: v for k, v in self.window_kwargs.items() if k != "autocast_dtype"}
        return {**settings, "precision": self.precision, "device": str(self.device)}

    def predict(self, slices: SliceSource) -> Iterator[np.ndarray]:
        """Yield the probability slice of every ``z`` in order.

        Args:
            slices: ``(Z, Y, X)`` source; slice ``z`` is read when first needed and dropped
                once no later prediction uses it (at most ``2 * context + 1`` are held).

        Yields:
            float32 ``(Y, X)`` foreground probabilities in [0, 1].
        """
        depth = len(slices)
        context = self.preprocessing.context
        cache: dict[int, np.ndarray] = {}
        for z in range(depth):
            indices = context_slices(z, depth, context)
            for index in list(cache):
                if index < indices[0]:
                    del cache[index]
            for index in indices:
                if int(index) not in cache:
                    cache[int(index)] = self.preprocessing(np.asarray(slices[int(index)]))
            stack = np.stack([cache[int(index)] for index in indices])
            image = torch.from_numpy(stack).to(self.device)
            probs = predict_slice(self.model, image, **self.window_kwargs)
            yield probs.cpu().numpy()
