"""The one inference pipeline: checkpoint + settings -> probability slices of any volume.

``eval.py``, ``predict.py``, ``export.py`` and the benchmarks all build their inference here:

1. :func:`build_pipeline` validates the command line's settings, loads the checkpoint (a file
   or a training run directory), applies the checkpoint's own evaluation settings beneath the
   explicit overrides (:mod:`emseg.inference.settings`) and instantiates the settings objects
   (``conf/inference`` -> :class:`~emseg.inference.WindowSettings`, ``conf/postprocess`` ->
   :class:`~emseg.postprocess.PostprocessSettings`);
2. :meth:`InferencePipeline.probabilities` streams a ``(Z, Y, X)`` source through
   sliding-window inference and the streaming 3D median filter (its footprint in voxels per
   axis; an extent in nm, ``postprocess.median_nm``, is converted with :func:`voxel_size_of`).

What happens to the probabilities afterwards (scoring, writing, thresholding, removing small
components) is the caller's.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from emseg.errors import ConfigError
from emseg.hardware import set_torch_threads
from emseg.inference.checkpoint import Checkpoint, load_model
from emseg.inference.settings import apply_checkpoint_settings, command_line_overrides
from emseg.inference.volume_predictor import (
    PrefetchedBox,
    Region,
    SliceSource,
    VolumePredictor,
    shape_of,
)
from emseg.inference.window import WindowSettings
from emseg.postprocess import PostprocessSettings, median_filter_slices

__all__ = ["InferencePipeline", "build_pipeline", "check_threshold", "voxel_size_of"]

log = logging.getLogger(__name__)


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in (0, 1), or :class:`ConfigError`."""
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    return value


def voxel_size_of(
    run_config: Mapping[str, Any], slices: object | None = None
) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size in nm that post-processing footprints are measured in.

    The checkpoint's training data (``data.voxel_size`` of its run config: the model was trained
    at it) first, else what the volume being predicted records (``slices.voxel_size``, or its
    ``source``'s for a z-range view), else ``None``.
    """
    data = run_config.get("data") or {}
    configured = data.get("voxel_size") if isinstance(data, Mapping) else None
    found = configured
    if found is None:
        found = getattr(slices, "voxel_size", None)
    if found is None:
        found = getattr(getattr(slices, "source", None), "voxel_size", None)
    if found is None:
        return None
    if not isinstance(found, Sequence) or len(found) != 3:
        where = "the checkpoint's data.voxel_size" if configured is not None else "the volume's"
        raise ConfigError(f"{where} voxel size must be three numbers (z, y, x), got {found!r}")
    return tuple(float(v) for v in found)  # type: ignore[return-value]


@dataclass
class InferencePipeline:
    """A checkpoint's network with validated inference and post-processing settings.

    Attributes:
        checkpoint: the loaded checkpoint (network, preprocessing, run config, path).
        window: the sliding-window settings.
        postprocess: the post-processing settings.
        threshold: probability above which a pixel is foreground.
        applied: the checkpoint's evaluation settings that were applied (``{"key": value}``).
    """

    checkpoint: Checkpoint
    window: WindowSettings = field(default_factory=WindowSettings)
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    threshold: float = 0.5
    applied: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def predictor(self) -> VolumePredictor:
        """The slice predictor (created on first use: it moves the network to its device)."""
        return VolumePredictor(self.checkpoint.net, self.checkpoint.preprocessing, self.window)

    def probabilities(self, slices: SliceSource, first: int = 0) -> Iterator[np.ndarray]:
        """Float32 ``(Y, X)`` foreground probabilities of slices ``first ..`` of ``slices``.

        Slices before ``first`` only give 2.5D context to the first returned one. The 3D
        median filter (:meth:`median_footprint`) is applied to the returned slices on the
        stream, on torch's intra-op thread count; at most ``2 * context + 1`` input and
        ``size_z`` output slices are held.

        Raises:
            ConfigError: ``postprocess.median_nm`` without a known voxel size (at once).
        """
        footprint = self.median_footprint(slices)
        probs = itertools.islice(self.predictor.predict(slices), int(first), None)
        return median_filter_slices(probs, footprint, torch.get_num_threads())

    def z_halo(self, slices: object | None = None) -> int:
        """Slices beyond a z range that its probabilities depend on: the 2.5D context plus the
        3D median's half-size in z (:meth:`block_probabilities` reads no further)."""
        return int(self.checkpoint.preprocessing.context) + self.median_footprint(slices)[0] // 2

    def block_probabilities(
        self,
        slices: SliceSource,
        start: int,
        stop: int,
        region: Region | None = None,
    ) -> np.ndarray:
        """Float32 ``(stop - start, Y, X)`` probabilities of slices ``start .. stop - 1``
        (of rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1`` only, given ``region`` =
        ``((y0, y1), (x0, x1))``), equal to the same voxels of :meth:`probabilities` over the
        whole of ``slices``.

        The network predicts the block grown by the median's radius on every axis (clipped to
        the volume), each slice with its 2.5D context from the volume and a region with the
        whole slice's windows (:mod:`emseg.inference.slice_region`), all from one read of the
        input box this needs (:class:`~emseg.inference.volume_predictor.PrefetchedBox`); the
        median runs over those and only the block's own voxels are kept: its outer voxels see
        their true neighbours, or the volume's ends extended exactly as the whole-volume filter
        extends them.
        """
        depth = len(slices)
        if not 0 <= start < stop <= depth:
            raise ValueError(f"slices {start}-{stop - 1} are not within 0-{depth - 1}")
        footprint = self.median_footprint(slices)
        radius = footprint[0] // 2
        first, last = max(0, start - radius), min(depth, stop + radius)
        grown, keep = None, (slice(None), slice(None))
        if region is not None:
            (y0, y1), (x0, x1) = region
            _, height, width = shape_of(slices)
            if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
                raise ValueError(f"region {region} is not within the {height} x {width} slice")
            ry, rx = footprint[1] // 2, footprint[2] // 2
            gy0, gy1 = max(0, y0 - ry), min(height, y1 + ry)
            gx0, gx1 = max(0, x0 - rx), min(width, x1 + rx)
            grown = ((gy0, gy1), (gx0, gx1))
            keep = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
        box = self.predictor.input_box(slices, first, last, grown)
        probs = self.predictor.predict(PrefetchedBox(slices, box), first, last, grown)
        # The median's z context slices are neighbours only: the blocks that own them filter
        # them; the islice stops before the trailing ones.
        filtered = median_filter_slices(probs, footprint, torch.get_num_threads(), start - first)
        kept = itertools.islice(filtered, stop - start)
        return np.stack([p[keep] for p in kept]).astype(np.float32, copy=False)

    def median_footprint(self, slices: object | None = None) -> tuple[int, int, int]:
        """The 3D median's ``(Z, Y, X)`` footprint in voxels for ``slices`` (see
        :func:`voxel_size_of`); ``(1, 1, 1)`` = off."""
        post = self.postprocess
        if post.median_nm is None:
            return post.footprint()
        voxel_size = voxel_size_of(self.checkpoint.config, slices)
        footprint = post.footprint(voxel_size)
        log.info(
            "3D median of %s nm at voxel size %s nm: %s voxels (z, y, x)",
            post.median_nm,
            voxel_size,
            "x".join(map(str, footprint)),
        )
        return footprint

    def warn_on_intensities(self, slices: SliceSource, name: str) -> None:
        """Warn when ``slices`` are scaled unlike the training data (12-bit data in uint16...).

        Nothing to check for a checkpoint trained with ``data.percentiles``: each volume is
        mapped by its own percentiles, whatever its scale.
        """
        pre = self.checkpoint.preprocessing
        if pre.percentiles is not None:
            return
        middle = pre(np.asarray(slices[len(slices) // 2]))
        mean = float(middle.mean()) * pre.std + pre.mean  # back to the [0, 1] scale
        if abs(mean - pre.mean) > 3 * pre.std:
            log.warning(
                "%s: mean intensity %.3f after scaling to [0, 1] is far from the training "
                "data's %.3f +- %.3f: integer images are divided by their dtype maximum (65535 "
                "for uint16) and float images must already be in [0, 1]; rescale the input.",
                name,
                mean,
                pre.mean,
                pre.std,
            )

    def describe(self) -> dict[str, Any]:
        """What ran, for logs and metrics.json: effective inference settings and the rest."""
        return {
            "checkpoint": str(self.checkpoint.path),
            "inference": self.predictor.describe(),
            "postprocess": self.postprocess.as_dict(),
            "threshold": self.threshold,
            "checkpoint_settings": dict(self.applied),
        }


def _settings(cfg: DictConfig) -> tuple[WindowSettings, PostprocessSettings]:
    window = instantiate(cfg.inference) if cfg.get("inference") is not None else WindowSettings()
    post = cfg.get("postprocess")
    return window, instantiate(post) if post is not None else PostprocessSettings()


def build_pipeline(cfg: DictConfig, checkpoint: Checkpoint | None = None) -> InferencePipeline:
    """The pipeline of an eval / predict / export config (``ckpt_path``, ``inference``, ...).

    The command line's settings are validated before the checkpoint is loaded, so a bad value
    fails at once; ``cfg`` is updated in place with the checkpoint's evaluation settings.

    Args:
        cfg: a composed ``conf/{eval,predict,export}.yaml``: ``ckpt_path``, ``inference``,
            optionally ``postprocess``, ``threshold``, ``torch_threads``,
            ``checkpoint_settings``.
        checkpoint: an already loaded checkpoint to use instead of ``cfg.ckpt_path``.

    Raises:
        ConfigError: an invalid setting (named by its key); CheckpointError: the checkpoint.
    """
    set_torch_threads(cfg.get("torch_threads"))
    check_threshold(cfg.get("threshold", 0.5))
    _settings(cfg)  # validate what the command line gave before any slow work
    checkpoint = checkpoint or load_model(cfg.ckpt_path)  # or a bioimage.io package
    applied = apply_checkpoint_settings(cfg, checkpoint.config, command_line_overrides())
    threshold = check_threshold(cfg.get("threshold", 0.5))  # the checkpoint's, if it has one
    window, post = _settings(cfg)
    return InferencePipeline(checkpoint, window, post, threshold, applied)
