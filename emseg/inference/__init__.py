"""Whole-slice and whole-volume inference as pure functions, independent of Lightning.

* :mod:`~emseg.inference.checkpoint`: network + preprocessing from a ``train.py`` checkpoint;
* :mod:`~emseg.inference.sliding_window`: one slice in one window, or by Gaussian-blended windows;
* :mod:`~emseg.inference.tta`: flip / rot90 test-time augmentation as forward/inverse pairs;
* :mod:`~emseg.inference.volume_predictor`: a volume streamed slice by slice.
"""

from emseg.inference.checkpoint import Checkpoint, CheckpointError, Preprocessing, load_checkpoint
from emseg.inference.sliding_window import BLEND_MODES, PAD_MODES, predict_slice
from emseg.inference.tta import TTA_MODES, apply_tta, tta_transforms
from emseg.inference.volume_predictor import (
    PRECISIONS,
    SliceSource,
    TiffSlices,
    VolumePredictor,
    resolve_device,
    resolve_precision,
)

__all__ = [
    "BLEND_MODES",
    "PAD_MODES",
    "PRECISIONS",
    "TTA_MODES",
    "Checkpoint",
    "CheckpointError",
    "Preprocessing",
    "SliceSource",
    "TiffSlices",
    "VolumePredictor",
    "apply_tta",
    "load_checkpoint",
    "predict_slice",
    "resolve_device",
    "resolve_precision",
    "tta_transforms",
]
