"""bioimage.io pre- and post-processing steps, in numpy, for emseg's slice-by-slice pipeline.

A package declares how raw data becomes the network's input (``inputs[0].preprocessing``) and
how the network's output becomes the result (``outputs[0].postprocessing``), as a list of
steps ``{id, kwargs}`` (bioimage.io spec 0.5). emseg runs a package slice by slice, so each
step is applied here to one ``(Y, X)`` slice at a time, with the formulas of
``bioimageio.core``'s own implementation (``bioimageio/core/proc_ops.py``):

* ``ensure_dtype`` (cast), ``scale_linear`` (``x * gain + offset``), ``clip`` (``[min, max]``),
  ``fixed_zero_mean_unit_variance`` (``(x - mean) / (std + eps)``, ``eps = 1e-6``): fixed
  numbers, one per tensor (a per-channel variant with equal values counts as one);
* ``zero_mean_unit_variance`` (``(x - mean) / (std + eps)``) and ``scale_range``
  (``(x - p_low) / (p_high - p_low + eps)``): statistics of the *sample*; bioimage.io's sample
  is the image a tool is given, emseg's is the whole volume, so they are measured once per
  volume by :meth:`PackagePreprocessing.for_volume` (the bounded, seeded voxel sample of
  :func:`emseg.data.normalization.sample_statistics`: at most 64 evenly spaced slices and
  2**22 voxels), as emseg's own ``data.percentiles`` are.

Per-channel steps with different values per channel are refused: with 2.5D input the channels
are neighbouring z slices of one volume, normalised alike. Post-processing: ``sigmoid`` (the
network gives logits) or none (it gives probabilities), optionally followed by
``ensure_dtype``; anything else is refused by :func:`output_activation`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from emseg.data.normalization import (
    MAX_SLICES,
    MAX_VOXELS,
    SAMPLING_SEED,
    Preprocessing,
    _sample_voxels,
)
from emseg.errors import ConfigError

__all__ = [
    "FIXED_STEPS",
    "MEASURED_STEPS",
    "PackagePreprocessing",
    "Step",
    "apply_steps",
    "check_preprocessing",
    "output_activation",
]

log = logging.getLogger(__name__)

Step = tuple[str, dict[str, Any]]
"""One processing step: its bioimage.io ``id`` and ``kwargs`` (plain values)."""

FIXED_STEPS = ("ensure_dtype", "scale_linear", "clip", "fixed_zero_mean_unit_variance")
MEASURED_STEPS = ("zero_mean_unit_variance", "scale_range")
DEFAULT_EPS = 1e-6
_DTYPES = {"float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32"}
_DTYPES |= {"uint64", "int64", "bool"}


def _one_value(value: Any, step: str, key: str) -> float:
    """A scalar kwarg, or a per-channel list whose values are all equal, as a float."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = {float(v) for v in value}
        if len(values) != 1:
            raise ConfigError(
                f"preprocessing {step} has a different {key} per channel ({list(value)}); emseg "
                "runs 2.5D channels (neighbouring z slices) with one normalisation"
            )
        return values.pop()
    return float(value)


def check_preprocessing(steps: Sequence[Step], where: str) -> tuple[Step, ...]:
    """Validate and normalise ``steps`` (scalars for per-channel lists of equal values).

    Args:
        steps: the package's preprocessing, in order.
        where: the package, named in the error.

    Raises:
        ConfigError: a step emseg cannot run (named, with what it can run).
    """
    checked: list[Step] = []
    for name, kwargs in steps:
        kwargs = dict(kwargs or {})
        try:
            if name == "ensure_dtype":
                if str(kwargs.get("dtype")) not in _DTYPES:
                    raise ConfigError(f"ensure_dtype to {kwargs.get('dtype')!r}")
                checked.append((name, {"dtype": str(kwargs["dtype"])}))
            elif name == "scale_linear":
                gain = _one_value(kwargs.get("gain", 1.0), name, "gain")
                offset = _one_value(kwargs.get("offset", 0.0), name, "offset")
                checked.append((name, {"gain": gain, "offset": offset}))
            elif name == "clip":
                low, high = kwargs.get("min"), kwargs.get("max")
                bounds = {"min": None if low is None else float(low)}
                bounds["max"] = None if high is None else float(high)
                checked.append((name, bounds))
            elif name == "fixed_zero_mean_unit_variance":
                mean = _one_value(kwargs["mean"], name, "mean")
                std = _one_value(kwargs["std"], name, "std")
                checked.append((name, {"mean": mean, "std": std, "eps": DEFAULT_EPS}))
            elif name == "zero_mean_unit_variance":
                checked.append((name, {"eps": float(kwargs.get("eps", DEFAULT_EPS))}))
            elif name == "scale_range":
                if kwargs.get("reference_tensor") not in (None, "", "input"):
                    raise ConfigError(
                        f"scale_range with reference_tensor {kwargs['reference_tensor']!r}"
                    )
                low = float(kwargs.get("min_percentile", 0.0))
                high = float(kwargs.get("max_percentile", 100.0))
                eps = float(kwargs.get("eps", DEFAULT_EPS))
                checked.append((name, {"min_percentile": low, "max_percentile": high, "eps": eps}))
            else:
                raise ConfigError(f"step {name!r}")
        except ConfigError as err:
            message = str(err)
            if message.startswith("preprocessing "):
                raise ConfigError(f"model: {where}: {message}") from err
            supported = ", ".join(FIXED_STEPS + MEASURED_STEPS)
            raise ConfigError(
                f"model: {where}: its preprocessing {message} is not one emseg can run "
                f"({supported})"
            ) from err
    return tuple(checked)


def apply_steps(
    x: np.ndarray, steps: Sequence[Step], measured: Sequence[tuple[float, float]] = ()
) -> np.ndarray:
    """Apply preprocessing ``steps`` to ``x`` (any shape), as ``bioimageio.core`` does.

    Args:
        x: raw values, e.g. one ``(Y, X)`` slice or a ``(C, Y, X)`` stack.
        steps: checked steps (:func:`check_preprocessing`).
        measured: for each measured step in order, its ``(a, b)``: ``(mean, std)`` of
            ``zero_mean_unit_variance``, ``(p_low, p_high)`` of ``scale_range``.

    Returns:
        The processed array (float32 unless an ``ensure_dtype`` says otherwise).
    """
    values = iter(measured)
    out = np.asarray(x)
    for name, kwargs in steps:
        if name == "ensure_dtype":
            out = out.astype(kwargs["dtype"], copy=False)
            continue
        out = out.astype(np.float32, copy=False)
        if name == "scale_linear":
            out = out * np.float32(kwargs["gain"]) + np.float32(kwargs["offset"])
        elif name == "clip":
            out = np.clip(out, kwargs["min"], kwargs["max"])
        elif name == "fixed_zero_mean_unit_variance":
            out = (out - np.float32(kwargs["mean"])) / np.float32(kwargs["std"] + kwargs["eps"])
        elif name == "zero_mean_unit_variance":
            mean, std = next(values)
            out = (out - np.float32(mean)) / np.float32(std + kwargs["eps"])
        elif name == "scale_range":
            low, high = next(values)
            out = (out - np.float32(low)) / np.float32(high - low + kwargs["eps"])
    return out.astype(np.float32, copy=False)


class _AsFloat:
    """A volume's slices as float32 raw values (not scaled to [0, 1]), for the voxel sample."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def __len__(self) -> int:
        return len(self.volume)

    def __getitem__(self, z: int) -> np.ndarray:
        return np.asarray(self.volume[z]).astype(np.float32)


@dataclass(frozen=True)
class PackagePreprocessing(Preprocessing):
    """A package's declared preprocessing in the shape of emseg's :class:`Preprocessing`.

    :class:`~emseg.inference.VolumePredictor` calls it on every raw ``(Y, X)`` slice and stacks
    ``2 * context + 1`` of them as the input channels. ``mean`` / ``std`` are 0 / 1: the
    network's input after the package's standardisation (``warn_on_intensities`` compares
    against them). ``percentiles`` is set (to the ``scale_range`` percentiles, else (0, 100))
    whenever a step needs the volume's statistics, so the predictor binds each volume first
    (:meth:`for_volume`); ``intensity_range`` then marks it as bound.

    Attributes:
        steps: the checked steps (:func:`check_preprocessing`).
        measured: per measured step, its ``(a, b)`` on the bound volume (see :func:`apply_steps`).
    """

    steps: tuple[Step, ...] = ()
    measured: tuple[tuple[float, float], ...] = field(default=())

    @classmethod
    def from_steps(cls, steps: tuple[Step, ...], context: int) -> PackagePreprocessing:
        """The preprocessing of ``steps`` for a network of ``2 * context + 1`` channels."""
        ranges = [
            (k["min_percentile"], k["max_percentile"]) for n, k in steps if n == "scale_range"
        ]
        needs_volume = any(name in MEASURED_STEPS for name, _ in steps)
        percentiles = (ranges[0] if ranges else (0.0, 100.0)) if needs_volume else None
        return cls(context, 0.0, 1.0, percentiles, None, steps)

    def for_volume(self, volume: Any, name: str = "") -> PackagePreprocessing:
        """Bound to ``volume``: each measured step's statistics on its sampled voxels, each
        measured after the steps before it (as the package's chain computes them)."""
        if self.percentiles is None or self.intensity_range is not None:
            return self
        values, slices, _ = _sample_voxels(_AsFloat(volume), MAX_VOXELS, MAX_SLICES, SAMPLING_SEED)
        measured: list[tuple[float, float]] = []
        for index, (step, kwargs) in enumerate(self.steps):
            if step not in MEASURED_STEPS:
                continue
            current = apply_steps(values, self.steps[:index], measured)
            if step == "zero_mean_unit_variance":
                pair = (float(current.mean(dtype=np.float64)), float(current.std(dtype=np.float64)))
            else:
                pair = tuple(
                    float(v)
                    for v in np.percentile(
                        current, (kwargs["min_percentile"], kwargs["max_percentile"])
                    )
                )
            measured.append(pair)  # type: ignore[arg-type]
            log.info(
                "%s: package preprocessing %s measured on %d voxels of %d slices: %.6g, %.6g",
                name or "the volume",
                step,
                values.size,
                slices,
                *pair,
            )
        first = measured[0] if measured else (0.0, 1.0)
        return replace(self, intensity_range=first, measured=tuple(measured))

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """The network input of raw slices ``(..., Y, X)``: float32, the package's steps applied.

        Raises:
            ValueError: a measured step, but :meth:`for_volume` was not called.
        """
        if self.percentiles is not None and self.intensity_range is None:
            raise ValueError("the package's preprocessing needs for_volume(volume) first")
        return apply_steps(slices, self.steps, self.measured)


def output_activation(steps: Sequence[Step], where: str) -> str:
    """``"sigmoid"`` when the package's network gives logits, ``"none"`` for probabilities.

    Args:
        steps: the output's postprocessing, in order (a trailing ``ensure_dtype`` is ignored).
        where: the package, named in the error.

    Raises:
        ConfigError: any other postprocessing (emseg thresholds and filters on its own).
    """
    names = [name for name, _ in steps]
    while names and names[-1] == "ensure_dtype":
        names.pop()
    if names == ["sigmoid"]:
        return "sigmoid"
    if not names:
        return "none"
    raise ConfigError(
        f"model: {where}: its postprocessing {' -> '.join(names)} is not a foreground "
        "probability emseg can use (supported: sigmoid, or none for a network that outputs "
        "probabilities)"
    )


def plain_steps(descrs: Sequence[Any]) -> list[Step]:
    """bioimage.io processing descriptions (spec objects) as ``(id, kwargs)`` steps."""
    steps: list[Step] = []
    for descr in descrs:
        kwargs = getattr(descr, "kwargs", None)
        plain: Mapping[str, Any] = (
            kwargs.model_dump(mode="json") if hasattr(kwargs, "model_dump") else dict(kwargs or {})
        )
        steps.append((str(descr.id), dict(plain)))
    return steps
