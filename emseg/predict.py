"""Segment any EM image or volume: ``python predict.py ckpt_path=... input=... output=...``.

The input TIFF (2D ``(Y, X)`` or 3D ``(Z, Y, X)``, uint8 / uint16 / float) is streamed slice by
slice through :class:`~emseg.inference.VolumePredictor` with the checkpoint's own
normalisation and 2.5D context, and the foreground probabilities are written slice by slice,
so memory stays bounded whatever the volume size. Every output is written to
``<output>.tmp-<pid>.tif`` and renamed over ``output`` only when complete; the temporary
files are deleted on any error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from emseg.errors import ConfigError
from emseg.inference import Preprocessing, TiffSlices, VolumePredictor, load_checkpoint
from emseg.inference.settings import apply_checkpoint_settings, command_line_overrides
from emseg.postprocess import (
    check_postprocess_args,
    median_filter_slices,
    remove_small_components_slices,
)

__all__ = [
    "OUTPUT_DTYPES",
    "SliceWriter",
    "check_output_path",
    "configure_threads",
    "probabilities_as",
    "progress_bar",
    "run",
]

log = logging.getLogger(__name__)

OUTPUT_DTYPES = ("uint8", "float16")
T = TypeVar("T")


def probabilities_as(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float probabilities ``(Y, X)`` in [0, 1] as uint8 (``round(255 p)``) or float16."""
    if dtype == "uint8":
        return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    if dtype == "float16":
        return probs.astype(np.float16)
    raise ConfigError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}; got {dtype!r}")


def progress_bar(
    items: Iterable[T], total: int, description: str, enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while showing slices done / total, elapsed time and ETA on stderr."""
    if not enabled:
        yield from items
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slices"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def check_output_path(path: Path, key: str, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse outputs in missing directories, over inputs, or over existing files.

    Raises:
        ConfigError: naming ``key`` (the config key of the output) and the problem.
    """
    if not path.parent.is_dir():
        raise ConfigError(f"{key}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a directory; give a file name such as out.tif")
    for other in inputs:
        if other.exists() and path.exists() and path.resolve() == other.resolve():
            raise ConfigError(f"{key}: {path} is also an input; choose another file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{key}: {path} already exists; pass overwrite=true to replace it")
    try:  # root ignores permission bits: only trying tells whether the directory is writable
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {path.parent} ({err.strerror})") from err


class SliceWriter:
    """Write a ``(Z, Y, X)`` or ``(Y, X)`` TIFF slice by slice, atomically.

    Slices go to ``<path>.tmp-<pid>.tif``; :meth:`commit` renames it to ``path`` once all
    slices are written, :meth:`abort` deletes it. Used as a context manager, an exception
    deletes whatever was not committed.

    Args:
        path: final file name.
        shape: ``(Z, Y, X)`` or ``(Y, X)``: the shape the file will have.
        dtype: numpy dtype of the slices.
        tag: extra part of the temporary name, for several temporaries of one output.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | str, tag: str = ""):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.depth = self.shape[0] if len(self.shape) == 3 else 1
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}{tag}.tif")
        self.written = 0
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        # Classic TIFF offsets are 32-bit: use BigTIFF well before 4 GiB.
        self._tif: tifffile.TiffWriter | None = tifffile.TiffWriter(
            self.tmp_path, bigtiff=nbytes > 2**31
        )

    def write(self, page: np.ndarray) -> None:
        """Append slice ``(Y, X)``."""
        if self._tif is None:
            raise RuntimeError(f"{self.tmp_path} is closed")
        if page.shape != self.shape[-2:] or page.dtype != self.dtype:
            raise ValueError(f"slice {page.shape} {page.dtype} does not fit {self.shape}")
        # Contiguous pages form one series; a 3D file of one slice needs its Z axis explicitly.
        data = page[None] if len(self.shape) == 3 and self.depth == 1 else page
        axes = "ZYX" if data.ndim == 3 or len(self.shape) == 3 else "YX"
        self._tif.write(data, contiguous=True, metadata={"axes": axes})
        self.written += 1

    def close(self) -> None:
        """Finish the temporary file, checking that every slice was written."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None
            if self.written != self.depth:
                raise RuntimeError(f"{self.tmp_path}: {self.written} of {self.depth} slices")

    def commit(self) -> None:
        """Close and rename the temporary file to ``path`` (atomic on one file system)."""
        self.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if self._tif is not None:
            with contextlib.suppress(Exception):
                self._tif.close()
            self._tif = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> SliceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # no-op after commit (the temporary file is gone)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op threads when ``threads`` is given."""
    if threads is not None:
        if int(threads) <= 0:
            raise ConfigError(f"torch_threads must be positive, got {threads}")
        torch.set_num_threads(int(threads))


def _warn_on_intensities(slices: TiffSlices, pre: Preprocessing) -> None:
    """Warn when the input is scaled unlike the training data (e.g. 12-bit data in uint16)."""
    middle = pre(slices[len(slices) // 2])
    mean = float(middle.mean()) * pre.std + pre.mean  # back to the [0, 1] scale
    if abs(mean - pre.mean) > 3 * pre.std:
        log.warning(
            "%s: mean intensity %.3f after scaling to [0, 1] is far from the training data's "
            "%.3f +- %.3f: integer images are divided by their dtype maximum (65535 for uint16) "
            "and float images must already be in [0, 1]; rescale the input if it is not.",
            slices.path,
            mean,
            pre.mean,
            pre.std,
        )


def _mask_slices(path: Path, threshold_value: int) -> Iterator[np.ndarray]:
    with TiffSlices(path) as slices:
        for z in range(len(slices)):
            yield slices[z] >= threshold_value


def run(cfg: DictConfig) -> dict[str, Any]:
    """Predict ``cfg.input`` with ``cfg.ckpt_path`` and write ``cfg.output`` (see predict.yaml).

    Returns:
        The written file names, the number of slices, the effective inference settings and
        the seconds taken.
    """
    start = time.perf_counter()
    configure_threads(cfg.get("torch_threads"))
    post = cfg.postprocess
    check_postprocess_args(post.median_size, post.min_size, post.connectivity)
    if str(cfg.output_dtype) not in OUTPUT_DTYPES:
        raise ConfigError(f"output_dtype must be one of {OUTPUT_DTYPES}; got {cfg.output_dtype}")
    threshold = float(cfg.threshold)
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    input_path, output = Path(str(cfg.input)), Path(str(cfg.output))
    mask_output = Path(str(cfg.mask_output)) if cfg.get("mask_output") else None
    if int(post.min_size) > 0 and mask_output is None:
        raise ConfigError(
            "postprocess.min_size removes components from the binary mask: also set "
            "mask_output=<mask.tif>"
        )
    overwrite, show = bool(cfg.overwrite), bool(cfg.get("progress", True))
    check_output_path(output, "output", overwrite, [input_path])
    if mask_output is not None:
        check_output_path(mask_output, "mask_output", overwrite, [input_path])
        if mask_output.resolve() == output.resolve():
            raise ConfigError("mask_output must differ from output")

    with contextlib.ExitStack() as stack:
        slices = stack.enter_context(TiffSlices(input_path))
        checkpoint = load_checkpoint(cfg.ckpt_path)
        if apply_checkpoint_settings(cfg, checkpoint.config, command_line_overrides()):
            check_postprocess_args(post.median_size, post.min_size, post.connectivity)
            if int(post.min_size) > 0 and mask_output is None:
                raise ConfigError(
                    "the checkpoint's evaluation settings remove small components "
                    "(postprocess.min_size): also set mask_output=<mask.tif>, or "
                    "postprocess.min_size=0"
                )
        predictor: VolumePredictor = instantiate(cfg.inference)(
            model=checkpoint.net, preprocessing=checkpoint.preprocessing
        )
        _warn_on_intensities(slices, checkpoint.preprocessing)
        shape = slices.shape if slices.ndim == 3 else slices.shape[1:]
        log.info(
            "predicting %s %s %s with %s",
            input_path,
            "x".join(map(str, shape)),
            slices.dtype,
            predictor.describe(),
        )
        writers = [stack.enter_context(SliceWriter(output, shape, str(cfg.output_dtype)))]
        mask_writer = raw_mask = None
        if mask_output is not None:
            tag = ".raw" if int(post.min_size) > 0 else ""
            mask_writer = stack.enter_context(SliceWriter(mask_output, shape, np.uint8, tag))
            writers.append(mask_writer)
        probs = median_filter_slices(
            predictor.predict(slices), int(post.median_size), torch.get_num_threads()
        )
        for prob in progress_bar(probs, len(slices), f"predict {input_path.name}", show):
            writers[0].write(probabilities_as(prob, str(cfg.output_dtype)))
            if mask_writer is not None:
                mask_writer.write((prob > threshold).astype(np.uint8) * np.uint8(255))
        for writer in writers:
            writer.close()
        if mask_writer is not None and int(post.min_size) > 0:
            raw_mask = mask_writer
            mask_writer = stack.enter_context(SliceWriter(mask_output, shape, np.uint8))
            writers[-1] = mask_writer
            kept = remove_small_components_slices(
                lambda: _mask_slices(raw_mask.tmp_path, 128),
                int(post.min_size),
                int(post.connectivity),
            )
            for mask in progress_bar(kept, len(slices), "remove small components", show):
                mask_writer.write(mask * np.uint8(255))
            raw_mask.abort()  # the unfiltered mask was only an intermediate
        for writer in writers:
            writer.commit()
    seconds = time.perf_counter() - start
    log.info("wrote %s%s in %.1f s", output, f" and {mask_output}" if mask_output else "", seconds)
    return {
        "output": str(output),
        "mask_output": str(mask_output) if mask_output else None,
        "slices": len(slices),
        "inference": predictor.describe(),
        "seconds": seconds,
    }
