"""Whole-slice and whole-volume inference, independent of Lightning (an import test checks).

* :mod:`~emseg.inference.pipeline`: the one pipeline every entry point builds
  (:func:`build_pipeline`: checkpoint + validated settings -> probability slices);
* :mod:`~emseg.inference.window`: :class:`WindowSettings`, the validated inference settings;
* :mod:`~emseg.inference.settings`: a checkpoint's own evaluation settings beneath the
  command line's;
* :mod:`~emseg.inference.checkpoint`: network + preprocessing from a ``train.py`` checkpoint;
* :mod:`~emseg.inference.sliding_window`: one slice in one window, or by Gaussian-blended windows;
* :mod:`~emseg.inference.tta`: flip / rot90 test-time augmentation as forward/inverse pairs;
* :mod:`~emseg.inference.volume_predictor`: a volume streamed slice by slice.
"""

from emseg.inference.checkpoint import Checkpoint, CheckpointError, Preprocessing, load_checkpoint
from emseg.inference.pipeline import InferencePipeline, build_pipeline, check_threshold
from emseg.inference.sliding_window import model_stride, predict_slice
from emseg.inference.tta import TTA_MODES, apply_tta, tta_transforms
from emseg.inference.volume_predictor import (
    PRECISIONS,
    SliceSource,
    VolumePredictor,
    resolve_device,
    resolve_precision,
)
from emseg.inference.window import BLEND_MODES, PAD_MODES, WindowSettings

__all__ = [
    "BLEND_MODES",
    "PAD_MODES",
    "PRECISIONS",
    "TTA_MODES",
    "Checkpoint",
    "CheckpointError",
    "InferencePipeline",
    "Preprocessing",
    "SliceSource",
    "VolumePredictor",
    "WindowSettings",
    "apply_tta",
    "build_pipeline",
    "check_threshold",
    "load_checkpoint",
    "model_stride",
    "predict_slice",
    "resolve_device",
    "resolve_precision",
    "tta_transforms",
]
