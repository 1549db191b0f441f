"""Test-time augmentation over the dihedral group of the square, as explicit forward/inverse pairs.

A transform acts on the last two axes ``(Y, X)`` of an ``(N, C, Y, X)`` tensor. The prediction
for an image is the mean over transforms ``t`` of ``t.inverse(fn(t.forward(image)))``, so for a
model that is itself equivariant to the group the result equals the plain prediction.

* ``none``: the identity only;
* ``flips``: identity, flip Y, flip X, flip both (= rotation by 180 degrees), 4 passes;
* ``d4``: the 4 rotations by 90 degrees, each with and without an X flip, 8 passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from emseg.errors import ConfigError

__all__ = ["TTA_MODES", "TTAMode", "Transform", "apply_tta", "tta_transforms"]

TTAMode = Literal["none", "flips", "d4"]
TTA_MODES: tuple[str, ...] = get_args(TTAMode)

_YX = (-2, -1)


@dataclass(frozen=True)
class Transform:
    """One group element: ``inverse(forward(x)) == x`` for every ``(..., Y, X)`` tensor."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flip(dims: tuple[int, ...]) -> Transform:
    # A flip is its own inverse.
    def flip(x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims)

    axes = "".join("YX"[d + 2] for d in dims)
    return Transform(f"flip_{axes}", flip, flip)


def _rot_flip(k: int, flip_x: bool) -> Transform:
    """``forward = rot90^k o flip_x``, hence ``inverse = flip_x o rot90^-k``."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(torch.flip(x, (-1,)) if flip_x else x, k, _YX)

    def inverse(y: torch.Tensor) -> torch.Tensor:
        y = torch.rot90(y, -k, _YX)
        return torch.flip(y, (-1,)) if flip_x else y

    return Transform(f"rot{90 * k}" + ("_flip_X" if flip_x else ""), forward, inverse)


def tta_transforms(mode: str) -> tuple[Transform, ...]:
    """The transforms of a TTA mode (see the module docstring), identity first.

    Raises:
        ConfigError: ``mode`` is not one of ``none``, ``flips``, ``d4``.
    """
    if mode == "none":
        return (Transform("identity", _identity, _identity),)
    if mode == "flips":
        return (
            Transform("identity", _identity, _identity),
            _flip((-2,)),
            _flip((-1,)),
            _flip((-2, -1)),
        )
    if mode == "d4":
        return tuple(_rot_flip(k, flip_x) for flip_x in (False, True) for k in range(4))
    raise ConfigError(f"inference.tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")


def apply_tta(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "none"
) -> torch.Tensor:
    """Mean of ``inverse(fn(forward(x)))`` over the transforms of ``mode``.

    Args:
        fn: maps ``(N, C, Y, X)`` to ``(N, K, Y, X)`` (rotations swap Y and X for non-square
            input, so ``fn`` must accept any spatial size).
        x: float ``(N, C, Y, X)`` batch.
        mode: ``none`` | ``flips`` | ``d4``.

    Returns:
        ``(N, K, Y, X)``, the transform-averaged output (one pass per transform, so memory
        stays that of a single pass).
    """
    transforms = tta_transforms(mode)
    total = transforms[0].inverse(fn(transforms[0].forward(x)))
    for transform in transforms[1:]:
        total = total + transform.inverse(fn(transform.forward(x)))
    return total / len(transforms) if len(transforms) > 1 else total
