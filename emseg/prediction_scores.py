"""Scores of an existing prediction against labels, streamed: ``eval.py prediction=<volume>``.

No checkpoint and no inference: the prediction is read from disk block by block (a few slices,
the prediction store's chunk depth) together with the same slices of the labels, and each slice
goes through the very :class:`~emseg.volume_scores.VolumeScores` that scores eval.py's own
predictions, so memory is that of one block whatever the depth of the volume. Axes are
``(Z, Y, X)`` throughout.

What a prediction is, by its volume string:

* ``out.zarr``, a blockwise store of ``predict.py`` (:mod:`emseg.io.prediction_store`): its
  ``probabilities`` give the threshold sweep, and the binary prediction is its ``mask`` (the
  very voxels predict.py thresholded from float probabilities, hence eval.py's own counts) at
  the store's own threshold, or ``probabilities > threshold`` for another ``threshold=``;
* ``out.zarr/probabilities`` or ``out.zarr/mask``: that array alone (a mask is scored at the
  threshold the store was written with; it has no threshold sweep);
* any other volume (``pred.tif``, ``pred.h5:probs``, ``pred.zarr/p``, ...): probabilities,
  uint8 as ``round(255 p)`` (predict.py's and eval.py's ``predictions.tif``) or float in
  [0, 1]; a uint8 volume holding only 0 and 255 is a mask (predict.py's ``mask_output``).

A blockwise store not marked complete (interrupted, or still being written) is refused unless
``allow_incomplete`` is set; its missing blocks then read as 0 (background).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.data.labels import to_targets
from emseg.errors import ConfigError, DataError
from emseg.io import VolumeSource, open_volume
from emseg.io.formats import parse_volume
from emseg.volume_scores import VolumeScores

__all__ = ["PREDICTION_DTYPES", "PredictionScores", "score_prediction"]

log = logging.getLogger(__name__)

# What a prediction may be stored as: uint8 (round(255 p), or a 0 / 255 mask) or floats.
PREDICTION_DTYPES = ("uint8", "float16", "float32", "float64")
# Root attribute of a blockwise prediction store (emseg.io.prediction_store.ATTRS_KEY).
_STORE_ATTRS = "emseg"
_STORE_ARRAYS = ("probabilities", "mask")
# Sweep metrics, which need probabilities (None for a mask).
_SWEEP_KEYS = ("best_threshold", "fg_iou_at_best_threshold")
# At most this many voxels per block read (a deep-chunked store is read in thinner blocks).
_MAX_BLOCK_VOXELS = 1 << 26


@dataclass
class PredictionScores:
    """The result of :func:`score_prediction` (what metrics.json records).

    Attributes:
        metrics: :data:`~emseg.volume_scores.METRIC_KEYS`; the sweep keys are ``None`` when
            only a mask was scored.
        counts: ``{region: {tp, fp, tn, fn}}`` pooled over the volume.
        threshold: the threshold of the binary prediction (``None``: a mask of unknown one).
        slices: number of scored slices.
        prediction: what was read: the arrays, dtype, shape, completeness, the store's run.
        extra_masks: name -> ``{test_mask, metrics, counts, blocks}``.
        blocks: the block counts behind the fg IoU interval
            (:meth:`~emseg.volume_scores.VolumeScores.block_record`).
    """

    metrics: dict[str, float | None]
    counts: dict[str, dict[str, int]]
    threshold: float | None
    slices: int
    prediction: dict[str, Any]
    extra_masks: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, Any] | None = None


class _StoreLevel(VolumeSource):
    """Level ``0`` of one array of a blockwise store read with zarr directly: only for an
    incomplete store scored on request (:func:`emseg.io.open_volume` refuses those)."""

    def __init__(self, store: Path, name: str) -> None:
        import zarr

        try:
            self._array = zarr.open_array(str(store / name / "0"), mode="r")
        except Exception as err:  # zarr raises store-specific errors
            raise DataError(f"{store}/{name}: no readable array 0 ({err})") from err
        super().__init__(Path(f"{store}/{name}"), self._array.shape, self._array.dtype)

    def _read_block(self, z: slice, y: slice, x: slice) -> np.ndarray:
        return np.asarray(self._array[z, y, x])

    def close(self) -> None:
        self._array = None


@dataclass
class _Opened:
    """The opened arrays of a prediction and how to read them (one of the two may be None)."""

    probabilities: VolumeSource | None
    mask: VolumeSource | None
    threshold: float | None
    block: int
    info: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.probabilities or self.mask).shape  # type: ignore[union-attr]


def _store_attrs(spec: str) -> tuple[Path, str, dict[str, Any]] | None:
    """``(store, key, emseg attrs)`` when ``spec`` names a blockwise store or one of its
    arrays, else ``None`` (any other volume)."""
    kind, path, key = parse_volume(spec)
    if kind != "zarr" or not path.is_dir():
        return None
    import zarr

    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.get(_STORE_ATTRS)
    except Exception:  # not a group (a bare array store), or not Zarr: open_volume says
        return None
    if not isinstance(attrs, dict) or "layout" not in attrs:
        return None
    return path, key, attrs


def _open_store(
    store: Path,
    key: str,
    attrs: dict[str, Any],
    threshold: float,
    threshold_given: bool,
    allow_incomplete: bool,
    stack: contextlib.ExitStack,
) -> _Opened:
    """The arrays of a blockwise store that ``key`` names ("" = all), and the threshold."""
    layout = attrs["layout"]
    held = [name for name in _STORE_ARRAYS if name in layout.get("arrays", {})]
    name = key.split("/")[0] if key else ""
    if name and (name not in held or key not in (name, f"{name}/0")):
        raise DataError(
            f"prediction: {store} has no array {key!r}; arrays in the store: "
            f"{', '.join(held) or 'none'} (e.g. prediction={store}/{held[0] if held else 'mask'})"
        )
    complete = bool(attrs.get("complete"))
    if not complete and not allow_incomplete:
        raise DataError(
            f"prediction: {store} is an unfinished blockwise prediction (interrupted, or still "
            "being written); rerun the same predict.py command to finish it, or pass "
            "allow_incomplete=true to score it as it is (missing blocks count as background)"
        )
    if not complete:
        log.warning("%s is not complete: its missing blocks are scored as background", store)
    names = [name] if name else held
    run = dict(attrs.get("run") or {})
    stored = run.get("threshold")
    stored = None if stored is None else float(stored)
    if "probabilities" not in names and threshold_given and stored not in (None, threshold):
        raise ConfigError(
            f"threshold={threshold}: {store}/mask was thresholded at {stored} when predicted; "
            "a mask cannot be thresholded again (score its probabilities, or leave threshold "
            "out)"
        )
    if threshold_given and stored is not None and threshold != stored and "mask" in names:
        names.remove("mask")  # another threshold: the binary prediction from the probabilities
    if not threshold_given and stored is not None:
        threshold = stored
    arrays: dict[str, VolumeSource] = {}
    for array in names:
        spec = f"{store}/{array}"
        arrays[array] = stack.enter_context(
            open_volume(spec, "image") if complete else _StoreLevel(store, array)
        )
    chunk_z = int(layout.get("chunks", [1])[0])
    info = {
        "path": str(store),
        "store": True,
        "arrays": names,
        "complete": complete,
        "layout": layout,
        "run": run,
    }
    threshold_of = threshold if "probabilities" in names or stored is not None else None
    return _Opened(arrays.get("probabilities"), arrays.get("mask"), threshold_of, chunk_z, info)


def _open_prediction(
    spec: str,
    threshold: float,
    threshold_given: bool,
    allow_incomplete: bool,
    stack: contextlib.ExitStack,
) -> _Opened:
    """Open ``spec`` (see the module docstring) and check its arrays' dtypes and shapes."""
    found = _store_attrs(spec)
    try:
        if found is not None:
            opened = _open_store(
                *found, threshold, threshold_given, allow_incomplete, stack
            )  # fmt: skip
        else:
            source = stack.enter_context(open_volume(spec, "image"))
            info = {"path": spec, "store": False, "arrays": ["probabilities"], "complete": True}
            opened = _Opened(source, None, threshold, 1, info)
    except DataError as err:
        if str(err).startswith("prediction"):
            raise
        raise DataError(f"prediction: {err}") from err
    for source in (opened.probabilities, opened.mask):
        if source is not None and str(source.dtype) not in PREDICTION_DTYPES:
            raise DataError(
                f"prediction: {source.path} has dtype {source.dtype}; a prediction is uint8 "
                "(probabilities as round(255 p), or a 0 / 255 mask) or float probabilities "
                "in [0, 1]"
            )
    if opened.probabilities is not None and opened.mask is not None:
        if opened.probabilities.shape != opened.mask.shape:
            raise DataError(
                f"prediction: {spec}: probabilities {opened.probabilities.shape} and mask "
                f"{opened.mask.shape} differ in shape"
            )
    first = opened.probabilities if opened.probabilities is not None else opened.mask
    opened.info.update(shape=list(opened.shape), dtype=str(first.dtype))  # type: ignore[union-attr]
    slice_voxels = opened.shape[1] * opened.shape[2]
    opened.block = max(1, min(opened.block, _MAX_BLOCK_VOXELS // slice_voxels))
    return opened


def _open_labels(
    spec: str, key: str, shape: tuple[int, int, int], prediction: str, stack: contextlib.ExitStack
) -> VolumeSource:
    """The label volume ``spec`` (given as ``key``), lazily, checked against ``shape``."""
    try:
        labels = stack.enter_context(open_volume(spec, "labels"))
    except DataError as err:
        raise DataError(f"{key}: {err}") from err
    if labels.shape != shape:
        raise DataError(
            f"prediction {prediction} has shape {shape} but {key} {spec} has shape "
            f"{labels.shape}; they must label the same volume (Z, Y, X)"
        )
    return labels


def _probabilities(block: np.ndarray, where: Path, z0: int) -> np.ndarray:
    """Float32 ``(z, Y, X)`` probabilities of a stored block (uint8 = round(255 p))."""
    if block.dtype == np.uint8:
        return block.astype(np.float32) / np.float32(255.0)
    probs = block.astype(np.float32, copy=False)
    low, high = float(probs.min()), float(probs.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"prediction: {where}: probabilities must be in [0, 1], found {low:g} to {high:g} "
            f"from slice {z0} on"
        )
    return probs


def _check_mask_values(histogram: np.ndarray, where: Path) -> None:
    values = set(np.flatnonzero(histogram).tolist())
    if not values <= {0, 255}:
        raise DataError(
            f"prediction: {where}: a mask holds 0 / 255, found values {sorted(values)[:8]}"
        )


def score_prediction(
    prediction: str,
    labels: str,
    *,
    convention: str = "auto",
    unlabelled: int | None = None,
    threshold: float = 0.5,
    threshold_given: bool = False,
    edge_band: int = 32,
    limit_slices: int | None = None,
    allow_incomplete: bool = False,
    extra_masks: dict[str, str] | None = None,
) -> PredictionScores:
    """Score the prediction ``prediction`` against ``labels``, streamed block by block.

    Args:
        prediction: a volume string (module docstring): a blockwise store, one of its arrays,
            or a ``(Z, Y, X)`` probability (or 0 / 255 mask) volume in any format.
        labels: the ``(Z, Y, X)`` label volume (``data.test_mask``), of the same shape.
        convention: ``data.labels`` (``auto`` | ``binary`` | ``instances``).
        unlabelled: ``data.unlabelled``: the stored value of unannotated voxels (not scored).
        threshold: probability above which a voxel is foreground.
        threshold_given: whether the user set ``threshold`` (else a store's own threshold is
            used, the one its mask was made with).
        edge_band: width in pixels of the border band of every slice (``edge_fg_iou``).
        limit_slices: score only the first N slices (``None``: all).
        allow_incomplete: score a blockwise store that is not marked complete.
        extra_masks: name -> further binary label volume of the same shape, scored from the
            same prediction.

    Returns:
        The pooled metrics and counts (:class:`PredictionScores`).

    Raises:
        DataError: a missing file / store / array, an unfinished store, a shape mismatch
            between prediction and labels, a dtype or values a prediction cannot have.
        ConfigError: a ``threshold`` for a mask, which cannot be thresholded again.
    """
    with contextlib.ExitStack() as stack:
        opened = _open_prediction(
            prediction, float(threshold), threshold_given, allow_incomplete, stack
        )  # fmt: skip
        shape = opened.shape
        target = _open_labels(labels, "data.test_mask", shape, prediction, stack)
        extras = {
            str(name): _open_labels(str(path), f"extra_masks.{name}", shape, prediction, stack)
            for name, path in (extra_masks or {}).items()
        }
        depth = shape[0] if limit_slices is None else min(shape[0], int(limit_slices))
        t = float(threshold) if opened.threshold is None else opened.threshold
        scores = {"": VolumeScores(edge_band, t)}
        scores.update({name: VolumeScores(edge_band, t) for name in extras})
        histogram = np.zeros(256, np.int64)  # the stored values of the binary prediction
        for z0 in range(0, depth, opened.block):
            z = slice(z0, min(depth, z0 + opened.block))
            truths = {"": to_targets(target.read(z), labels, convention, unlabelled)}
            truths.update({n: to_targets(s.read(z), s.path, "binary") for n, s in extras.items()})
            probs = _read_probabilities(opened.probabilities, z)
            stored = opened.mask.read(z) if opened.mask is not None else probs[0]  # type: ignore[index]
            binary = stored > 0 if opened.mask is not None else probs[1] > t  # type: ignore[index]
            if stored.dtype == np.uint8:
                histogram += np.bincount(stored.ravel(), minlength=256)
            for name, score in scores.items():
                for i, truth in enumerate(truths[name]):
                    if probs is not None:
                        score.update_probs(probs[1][i], truth)
                    score.update_prediction(binary[i], truth)
        is_mask = _binary_kind(opened, histogram)
        results = {name: _result(score, is_mask) for name, score in scores.items()}
    main = results.pop("")
    extra = {name: {"test_mask": str(extra_masks[name]), **r} for name, r in results.items()}  # type: ignore[index]
    info = {**opened.info, "scored_as": "mask" if is_mask else "probabilities"}
    info["binary_from"] = "mask" if opened.mask is not None else "probabilities > threshold"
    if is_mask and not opened.info["store"]:
        t = None  # a mask of unknown threshold
    elif is_mask:
        t = opened.threshold
    return PredictionScores(main["metrics"], main["counts"], t, depth, info, extra, main["blocks"])


def _read_probabilities(
    source: VolumeSource | None, z: slice
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(stored, float32 probabilities)`` of slices ``z`` of ``source`` (``None``: none)."""
    if source is None:
        return None
    stored = source.read(z)
    return stored, _probabilities(stored, source.path, z.start)


def _binary_kind(opened: _Opened, histogram: np.ndarray) -> bool:
    """Whether only a mask was scored (no probabilities for a sweep); checks mask values."""
    if opened.mask is not None:
        _check_mask_values(histogram, opened.mask.path)
        return opened.probabilities is None
    source = opened.probabilities
    if source is None or source.dtype != np.uint8 or opened.info.get("store"):
        return False
    values = set(np.flatnonzero(histogram).tolist())
    if values <= {0, 1} and 1 in values:
        raise DataError(
            f"prediction: {source.path} holds only 0 and 1: a {{0, 1}} mask? uint8 "
            "predictions are probabilities as round(255 p) or 0 / 255 masks; store the mask "
            "as 0 / 255"
        )
    return values <= {0, 255}


def _result(scores: VolumeScores, is_mask: bool) -> dict[str, Any]:
    with warnings.catch_warnings():
        if is_mask:  # the sweep saw no probabilities: its numbers are dropped below
            warnings.filterwarnings("ignore", "The ``compute`` method of metric ThresholdSweep")
        metrics: dict[str, float | None] = dict(scores.compute())
    if is_mask:
        metrics.update(dict.fromkeys(_SWEEP_KEYS))  # a mask has no threshold sweep
    return {"metrics": metrics, "counts": scores.counts(), "blocks": scores.block_record()}
