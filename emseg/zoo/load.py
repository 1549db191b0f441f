"""A bioimage.io model package as a :class:`~emseg.inference.Checkpoint` for emseg's pipeline.

``predict.py model=<package.zip | rdf.yaml>`` (and ``eval.py``, and blockwise workers, which
receive it as ``ckpt_path``) run a package through emseg's own sliding windows, blockwise
prediction and post-processing: :func:`load_package` returns what
:func:`emseg.inference.load_checkpoint` returns for a checkpoint,

* ``net``: :class:`PackageNetwork`, the package's network (its ``pytorch_state_dict`` weights,
  else ``torchscript``, else ``onnx``) behind emseg's interface: float32 ``(N, C, Y, X)`` in,
  ``(N, 1, Y, X)`` logits out, whatever the package's axis order; inputs are padded to a size
  the package accepts (``min + n * step``) and the output cropped back;
* ``preprocessing``: :class:`~emseg.zoo.processing.PackagePreprocessing`, the package's
  declared steps on every raw slice, ``C = 2 * context + 1`` slices stacked as channels;
* ``config``: a run config holding what emseg's settings need: the package's ``config.emseg``
  (emseg's own packages: the evaluation settings chosen on validation, the voxel size, the
  training and test volumes), so the package predicts as its checkpoint did.

What emseg can run: one input and one output; input axes ``batch`` (optional), ``channel``
(optional: one channel, or 2.5D z slices named as emseg names them or recorded in
``config.emseg.context``), ``y``, ``x`` of variable size; output ``y`` / ``x`` the input's size
and one channel; preprocessing as :mod:`emseg.zoo.processing` lists; postprocessing
``sigmoid`` (or none for probabilities). Anything else, and a package whose own test input
does not reproduce its test output here, is refused in one line naming the package and why.
The pytorch_state_dict weights run the package's architecture source, as ``bioimageio.core``
does: load packages you trust.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emseg.errors import ConfigError
from emseg.inference.checkpoint import Checkpoint
from emseg.zoo.processing import (
    PackagePreprocessing,
    check_preprocessing,
    output_activation,
    plain_steps,
)

__all__ = ["PackageNetwork", "load_package"]

log = logging.getLogger(__name__)

WEIGHT_PRIORITY = ("pytorch_state_dict", "torchscript", "onnx")
_UNITS_NM = {"nanometer": 1.0, "micrometer": 1000.0, "angstrom": 0.1, "millimeter": 1e6}
_LOGIT_EPS = 1e-7


class _Stride(nn.Module):
    """Carries ``output_stride``, where :func:`emseg.inference.model_stride` reads it."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.output_stride = int(stride)


class _OnnxNet(nn.Module):
    """An onnxruntime session as a module (CPU): float32 in the package's axis order."""

    def __init__(self, model_bytes: bytes) -> None:
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})[0]
        return torch.from_numpy(out).to(x.device)


class PackageNetwork(nn.Module):
    """A package's network as emseg sees one: ``(N, C, Y, X)`` -> ``(N, 1, Y, X)`` logits.

    Args:
        inner: the package's network, in its own axis order.
        input_axes: the package's input axis ids in order (``batch``, ``channel``, ``y``,
            ``x``; ``batch`` / ``channel`` may be absent).
        output_axes: the output's axis ids in order (the same kinds).
        min_size, step: valid input sides are ``min_size + n * step`` (``y`` and ``x``).
        activation: ``sigmoid`` (the network gives logits) or ``none`` (probabilities, turned
            into logits here so that emseg's sigmoid returns them).
    """

    def __init__(
        self,
        inner: nn.Module,
        input_axes: tuple[str, ...],
        output_axes: tuple[str, ...],
        min_size: tuple[int, int],
        step: tuple[int, int],
        activation: str,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.input_axes, self.output_axes = input_axes, output_axes
        self.min_size, self.step, self.activation = min_size, step, activation
        multiple = (
            math.lcm(*step) if all(m % s == 0 for m, s in zip(min_size, step, strict=True)) else 1
        )
        self.encoder = _Stride(multiple)

    def _valid(self, side: int, axis: int) -> int:
        low, step = self.min_size[axis], self.step[axis]
        if side <= low or step == 0:
            return max(side, low) if step else low
        return low + math.ceil((side - low) / step) * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, Y, X)`` of float32 ``(N, C, Y, X)`` input."""
        height, width = x.shape[-2:]
        target = (self._valid(height, 0), self._valid(width, 1))
        pad_y, pad_x = target[0] - height, target[1] - width
        if pad_y or pad_x:
            mode = "reflect" if pad_y < height and pad_x < width else "replicate"
            x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
        order = {"batch": 0, "channel": 1, "y": 2, "x": 3}
        present = [axis for axis in ("batch", "channel", "y", "x") if axis in self.input_axes]
        squeezed = x
        for axis in ("channel", "batch"):
            if axis not in self.input_axes:
                squeezed = squeezed.squeeze(order[axis])
        out = self.inner(squeezed.permute(*[present.index(a) for a in self.input_axes]))
        out_present = list(self.output_axes)
        full = out.permute(
            *[out_present.index(a) for a in ("batch", "channel", "y", "x") if a in out_present]
        )
        for axis in ("batch", "channel"):
            if axis not in self.output_axes:
                full = full.unsqueeze(order[axis])
        full = full[:, :1, :height, :width].float()
        if self.activation == "none":
            full = torch.logit(full.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS))
        return full


def _refuse(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"model: {path}: {reason}")


def _describe(path: Path) -> Any:
    """The package's model description (spec 0.5; 0.4 packages converted), or one error."""
    if not path.exists():
        raise ConfigError(f"model: {path} does not exist")
    try:
        from bioimageio.spec import InvalidDescr, load_description
        from bioimageio.spec.model import v0_5
    except ImportError as err:  # pragma: no cover - a dependency of emseg
        raise ConfigError(
            f"model: reading bioimage.io packages needs bioimageio.spec ({err})"
        ) from err
    try:
        descr = load_description(path, format_version="latest", perform_io_checks=False)
    except Exception as err:  # a corrupt zip, unreadable YAML, ...: the library's own words
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise _refuse(path, f"not a readable bioimage.io package ({detail})") from err
    if isinstance(descr, InvalidDescr):
        raise _refuse(path, f"not a valid bioimage.io description ({_first_error(descr)})")
    if not isinstance(descr, v0_5.ModelDescr):
        kind = getattr(descr, "type", type(descr).__name__)
        raise _refuse(path, f"describes a {kind}, not a model")
    return descr


def _first_error(descr: Any) -> str:
    for detail in descr.validation_summary.details:
        for error in detail.errors:
            loc = ".".join(str(part) for part in error.loc)
            return " ".join(f"{loc}: {error.msg}".split())[:300]
    return "no details"


def _axes(tensor: Any, path: Path, role: str) -> tuple[str, ...]:
    """The tensor's axis ids, refused unless they are batch / channel / y / x."""
    kinds = [(str(a.id), str(a.type)) for a in tensor.axes]
    ids = tuple(axis_id for axis_id, _ in kinds)
    listed = ", ".join(f"{i} ({t})" for i, t in kinds)
    if any(kind == "space" and axis_id not in ("y", "x") for axis_id, kind in kinds):
        raise _refuse(
            path,
            f"its {role} axes are {listed}: a 3D model (space axis beyond y, x); emseg runs "
            "2D / 2.5D models over y, x and predicts z slice by slice",
        )
    allowed = {("batch", "batch"), ("channel", "channel"), ("y", "space"), ("x", "space")}
    if not set(kinds) <= allowed or not {"y", "x"} <= set(ids):
        raise _refuse(path, f"its {role} axes are {listed}; emseg runs batch?, channel?, y, x")
    return ids


def _spatial_sizes(tensor: Any, path: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(min, step)`` of the input's y and x sizes; fixed or referenced sizes are refused."""
    from bioimageio.spec.model import v0_5

    mins, steps = [], []
    for axis_id in ("y", "x"):
        axis = next(a for a in tensor.axes if str(a.id) == axis_id)
        size = axis.size
        if isinstance(size, v0_5.ParameterizedSize):
            mins.append(int(size.min))
            steps.append(int(size.step))
        elif isinstance(size, int):
            raise _refuse(
                path,
                f"its input {axis_id} size is fixed at {size}; emseg's sliding windows need a "
                "variable size (ParameterizedSize min + n * step)",
            )
        else:
            raise _refuse(path, f"its input {axis_id} size refers to another tensor ({size})")
    return (mins[0], mins[1]), (steps[0], steps[1])


def _check_output(descr: Any, path: Path) -> tuple[str, ...]:
    from bioimageio.spec.model import v0_5

    output, input_id = descr.outputs[0], str(descr.inputs[0].id)
    ids = _axes(output, path, "output")
    for axis in output.axes:
        if str(axis.type) == "channel" and axis.size != 1:
            names = ", ".join(str(n) for n in axis.channel_names)
            raise _refuse(
                path,
                f"its output has {axis.size} channels ({names}); emseg predicts one foreground "
                "probability per pixel",
            )
        if str(axis.type) == "space":
            size = axis.size
            same = (
                isinstance(size, v0_5.SizeReference)
                and str(size.tensor_id) == input_id
                and str(size.axis_id) == str(axis.id)
                and int(size.offset) == 0
                and float(getattr(axis, "scale", 1.0))
                == float(next(a for a in descr.inputs[0].axes if str(a.id) == str(axis.id)).scale)
            )
            if not same:
                raise _refuse(
                    path,
                    f"its output {axis.id} size is {size}, not the input's {axis.id} size; "
                    "emseg needs an output of the input's height and width",
                )
    return ids


def _context(descr: Any, path: Path, emseg_config: Mapping[str, Any]) -> int:
    """The 2.5D context ``k`` of a ``2k + 1``-channel input (0 for one channel)."""
    from emseg.zoo.export import channel_names

    channel = next((a for a in descr.inputs[0].axes if str(a.type) == "channel"), None)
    channels = 1 if channel is None else int(channel.size)
    if "context" in emseg_config:
        context = int(emseg_config["context"])
        if 2 * context + 1 != channels:
            raise _refuse(
                path, f"config.emseg.context {context} does not fit its {channels} input channels"
            )
        return context
    if channels == 1:
        return 0
    names = [str(n) for n in channel.channel_names]
    if channels % 2 and names == channel_names(channels // 2):
        return channels // 2
    raise _refuse(
        path,
        f"its input has {channels} channels ({', '.join(names)}); emseg feeds one EM slice, or "
        "2k + 1 neighbouring z slices named z_minus_k .. z .. z_plus_k",
    )


def _weights(descr: Any, path: Path) -> tuple[str, nn.Module]:
    """The first weight format emseg runs (:data:`WEIGHT_PRIORITY`) as a CPU module."""
    available = [name for name in WEIGHT_PRIORITY if getattr(descr.weights, name, None) is not None]
    if not available:
        present = [name for name, entry in descr.weights if entry is not None]
        raise _refuse(
            path,
            f"its weights are {', '.join(present)}; emseg runs {', '.join(WEIGHT_PRIORITY)}",
        )
    name = available[0]
    entry = getattr(descr.weights, name)
    try:
        if name == "pytorch_state_dict":
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            module = load_torch_model(entry, devices=["cpu"])
        elif name == "torchscript":
            module = torch.jit.load(io.BytesIO(entry.get_reader().read()), map_location="cpu")
        else:
            module = _OnnxNet(entry.get_reader().read())
    except Exception as err:
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise _refuse(path, f"its {name} weights cannot be loaded ({detail})") from err
    return name, module.eval()


def _tensor(file_descr: Any, path: Path, role: str) -> np.ndarray:
    if file_descr is None:
        raise _refuse(path, f"it has no {role} test tensor")
    try:
        return np.load(io.BytesIO(file_descr.get_reader().read()), allow_pickle=False)
    except Exception as err:
        raise _refuse(path, f"its {role} test tensor cannot be read ({err})") from err


def _check_test_tensors(
    descr: Any,
    path: Path,
    net: PackageNetwork,
    pre: PackagePreprocessing,
    in_axes: tuple[str, ...],
    out_axes: tuple[str, ...],
) -> float:
    """Run the package's test input through emseg's reading of it; the largest difference
    from its test output, or an error beyond the package's tolerance."""
    raw = _tensor(descr.inputs[0].test_tensor, path, "input")
    expected = _tensor(descr.outputs[0].test_tensor, path, "output")
    if raw.ndim != len(in_axes) or expected.ndim != len(out_axes):
        raise _refuse(
            path, f"its test tensors {raw.shape} / {expected.shape} do not match its axes"
        )
    order = [a for a in ("batch", "channel", "y", "x") if a in in_axes]
    raw = np.transpose(raw, [in_axes.index(a) for a in order])
    for axis in ("batch", "channel"):
        if axis not in in_axes:
            raw = np.expand_dims(raw, ("batch", "channel", "y", "x").index(axis))
    # Statistics of measured steps per sample (channel, y, x), as bioimage.io computes them.
    x = np.stack([pre.for_volume(s, "the test input")(s) for s in raw]).astype(np.float32)
    with torch.inference_mode():
        logits = net.float()(torch.from_numpy(x)).numpy()
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    out_order = [a for a in ("batch", "channel", "y", "x") if a in out_axes]
    expected = np.transpose(expected, [out_axes.index(a) for a in out_order])
    for axis in ("batch", "channel"):
        if axis not in out_axes:
            expected = np.expand_dims(expected, ("batch", "channel", "y", "x").index(axis))
    if expected.shape != probs.shape:
        raise _refuse(
            path, f"its test output has shape {expected.shape}, emseg computed {probs.shape}"
        )
    tolerance = _tolerance(descr)
    diff = np.abs(probs - expected.astype(np.float64))
    bad = diff > tolerance[1] + tolerance[0] * np.abs(expected)
    per_million = bad.sum() / bad.size * 1e6
    if per_million > tolerance[2]:
        raise _refuse(
            path,
            f"its test input does not give its test output here: {int(bad.sum())} of {bad.size} "
            f"values differ (largest {float(diff.max()):.3g}; tolerance rtol {tolerance[0]:g}, "
            f"atol {tolerance[1]:g}, {tolerance[2]:g} per million)",
        )
    return float(diff.max())


def _tolerance(descr: Any) -> tuple[float, float, float]:
    """``(rtol, atol, mismatched per million)``: the package's, else bioimage.io's defaults."""
    for entry in getattr(descr.config.bioimageio, "reproducibility_tolerance", ()) or ():
        return (
            float(entry.relative_tolerance),
            float(entry.absolute_tolerance),
            float(entry.mismatched_elements_per_million),
        )
    return 1e-3, 1e-3, 100.0


def _voxel_size(descr: Any, emseg_config: Mapping[str, Any]) -> list[float] | None:
    """The package's ``(z, y, x)`` voxel size in nm: emseg's record, else unknown (a 2D
    package states y / x only; post-processing in nm then uses the volume's)."""
    recorded = emseg_config.get("voxel_size")
    return [float(v) for v in recorded] if recorded else None


def load_package(path: str | Path) -> Checkpoint:
    """A bioimage.io package as a :class:`~emseg.inference.Checkpoint` (see the module).

    Args:
        path: the package's ``.zip`` or its ``rdf.yaml`` (``bioimageio.yaml``).

    Raises:
        ConfigError: missing, corrupt or not a model; a model emseg cannot run (3D, several
            inputs or outputs, other axes, a fixed size, unsupported processing, unloadable
            weights); test tensors not reproduced. One line naming the package and the reason.
    """
    path = Path(str(path))
    descr = _describe(path)
    if len(descr.inputs) != 1:
        raise _refuse(path, f"it has {len(descr.inputs)} inputs; emseg runs single-input models")
    if len(descr.outputs) != 1:
        raise _refuse(
            path, f"it has {len(descr.outputs)} outputs (multi-output); emseg runs one output"
        )
    in_axes = _axes(descr.inputs[0], path, "input")
    out_axes = _check_output(descr, path)
    min_size, step = _spatial_sizes(descr.inputs[0], path)
    extra = descr.config.model_extra or {}
    emseg_config = dict(extra.get("emseg") or {})
    context = _context(descr, path, emseg_config)
    steps = check_preprocessing(plain_steps(descr.inputs[0].preprocessing), str(path))
    activation = output_activation(plain_steps(descr.outputs[0].postprocessing), str(path))
    weights, inner = _weights(descr, path)
    net = PackageNetwork(inner, in_axes, out_axes, min_size, step, activation).eval()
    net.requires_grad_(False)
    pre = PackagePreprocessing.from_steps(steps, context)
    diff = _check_test_tensors(descr, path, net, pre, in_axes, out_axes)
    data = dict(emseg_config.get("data") or {})
    data.update({"context": context, "voxel_size": _voxel_size(descr, emseg_config)})
    config: dict[str, Any] = {
        "data": data,
        "model": {"_target_": "bioimageio", "name": str(descr.name), "weights": weights},
        "evaluation": dict(emseg_config.get("evaluation") or {}),
        "package": {"path": str(path), "name": str(descr.name), "weights": weights},
    }
    log.info(
        "package %s (%s): %s weights, input %s (context %d), preprocessing %s, output %s; its "
        "test tensors reproduced (largest difference %.2g)",
        path,
        descr.name,
        weights,
        ", ".join(in_axes),
        context,
        " -> ".join(name for name, _ in steps) or "none",
        activation,
        diff,
    )
    return Checkpoint(net=net, preprocessing=pre, config=config, path=path)
