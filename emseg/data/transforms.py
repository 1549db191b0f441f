"""Joint image/mask augmentation built on torchvision.transforms.v2.

Images are ``tv_tensors.Image`` (float, ``(C, Y, X)``, values in [0, 1] before normalisation) and
masks ``tv_tensors.Mask`` (``(1, Y, X)``): v2 applies geometric transforms to both and intensity
transforms to the image only. Two small transforms are written here because torchvision has no
equivalent: exact 90-degree rotations (``RandomRotation`` interpolates) and brightness/contrast
for any number of channels (``ColorJitter`` accepts 1 or 3, but 2.5D input has 2k+1).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from emseg.data.labels import IGNORE

__all__ = ["RandomRot90", "RandomBrightnessContrast", "train_transforms"]


class RandomRot90(v2.Transform):
    """Rotate image and mask together by k * 90 degrees, k uniform in {0, 1, 2, 3}."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


class RandomBrightnessContrast(v2.Transform):
    """Random brightness shift and contrast scale on images only (masks untouched).

    ``x -> (x - mean) * c + mean + b`` with ``c ~ U(1 - contrast, 1 + contrast)`` and
    ``b ~ U(-brightness, brightness)``, clamped to [0, 1].
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1) -> None:
        super().__init__()
        if brightness < 0 or contrast < 0 or contrast >= 1:
            raise ValueError("brightness must be >= 0 and contrast in [0, 1)")
        self.brightness = brightness
        self.contrast = contrast

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        b = (torch.rand(()) * 2 - 1) * self.brightness
        c = 1 + (torch.rand(()) * 2 - 1) * self.contrast
        return {"b": float(b), "c": float(c)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mean = inpt.mean()
        out = ((inpt - mean) * params["c"] + mean + params["b"]).clamp_(0, 1)
        return tv_tensors.wrap(out, like=inpt)


def train_transforms(
    flips: bool = True,
    rot90: bool = True,
    brightness: float = 0.1,
    contrast: float = 0.1,
    elastic_p: float = 0.0,
    elastic_alpha: float = 30.0,
    elastic_sigma: float = 5.0,
) -> v2.Compose:
    """The training augmentation pipeline, applied jointly to ``(Image, Mask)``.

    Args:
        flips: random horizontal and vertical flips.
        rot90: random rotation by multiples of 90 degrees (exact, no interpolation).
        brightness: maximum additive brightness shift (image in [0, 1]); 0 disables.
        contrast: maximum relative contrast change; 0 disables.
        elastic_p: probability of an elastic deformation (slow on CPU; 0 disables).
        elastic_alpha: elastic displacement magnitude in pixels.
        elastic_sigma: smoothness of the elastic displacement field in pixels.
    """
    steps: list[v2.Transform] = []
    if flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rot90:
        steps.append(RandomRot90())
    if elastic_p > 0:
        steps.append(
            v2.RandomApply(
                [
                    # Pixels pulled in from outside the patch have no label: IGNORE, not 0.
                    v2.ElasticTransform(
                        alpha=elastic_alpha,
                        sigma=elastic_sigma,
                        fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE},
                    )
                ],
                p=elastic_p,
            )
        )
    if brightness > 0 or contrast > 0:
        steps.append(RandomBrightnessContrast(brightness, contrast))
    return v2.Compose(steps)
