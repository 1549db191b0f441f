"""How windows are placed, blended and augmented over a slice: the validated inference settings.

:class:`WindowSettings` is what ``conf/inference`` instantiates (``_target_``); its field
defaults are the one place the defaults live (a config test checks that
``conf/inference/default.yaml`` equals them). Every value is checked once, on construction,
with an error naming its ``inference.*`` key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from emseg.errors import ConfigError
from emseg.inference.tta import TTA_MODES

__all__ = [
    "BLEND_MODES",
    "DEFAULT_MAX_WINDOW_AREA",
    "PAD_MODES",
    "BlendMode",
    "PadMode",
    "WindowSettings",
]

BlendMode = Literal["gaussian", "constant", "naive"]
BLEND_MODES: tuple[str, ...] = get_args(BlendMode)
PadMode = Literal["reflect", "replicate", "constant", "circular"]
PAD_MODES: tuple[str, ...] = get_args(PadMode)
# One window per slice up to this many padded pixels: 1024^2 bounds the activations of one
# forward pass while holding whole EM slices of typical size with their border.
DEFAULT_MAX_WINDOW_AREA = 1024 * 1024


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"inference.{key} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class WindowSettings:
    """Sliding-window inference settings (see :func:`emseg.inference.predict_slice`).

    Attributes:
        max_window_area: a padded slice (sides rounded up to the network stride) with at most
            this many pixels is one window, whatever ``tile_size`` and ``mode`` say; 0 always
            tiles.
        tile_size: maximum window side when tiling; ``None`` = always one window per slice.
        overlap: minimum overlap of neighbouring windows as a fraction of the tile, in [0, 1).
        mode: ``gaussian`` (weights ``exp(-d^2 / 2 sigma^2)``), ``constant`` (plain mean) or
            ``naive`` (disjoint tiles, ``overlap`` ignored).
        sigma_scale: Gaussian sigma as a fraction of the window side.
        border_pad: pixels added on every side of a slice before tiling.
        padding_mode: how they are filled: ``reflect`` | ``replicate`` | ``constant`` (zeros,
            i.e. the training mean) | ``circular``.
        sw_batch_size: windows per forward pass.
        tta: ``none`` | ``flips`` | ``d4`` test-time augmentation (:mod:`emseg.inference.tta`).
        precision: ``auto`` (bf16 on native-bf16 CPUs and bf16 GPUs, fp16 on older GPUs, else
            fp32) | ``32-true`` | ``bf16-mixed`` | ``16-mixed`` (or ``32`` / ``bf16`` / ``16``).
        device: ``auto`` (CUDA if available) | ``cpu`` | ``cuda`` | ``cuda:1`` ...
    """

    max_window_area: int = DEFAULT_MAX_WINDOW_AREA
    tile_size: int | None = 512
    overlap: float = 0.25
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    border_pad: int = 32
    padding_mode: str = "reflect"
    sw_batch_size: int = 2
    tta: str = "none"
    precision: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.tile_size is not None and int(self.tile_size) < 1:
            raise ConfigError(
                f"inference.tile_size must be positive (or null), got {self.tile_size}"
            )
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(
                f"inference.overlap must be in [0, 1) (a tile fraction), got {self.overlap}"
            )
        _choice("mode", self.mode, BLEND_MODES)
        if float(self.sigma_scale) <= 0:
            raise ConfigError(f"inference.sigma_scale must be positive, got {self.sigma_scale}")
        if int(self.border_pad) < 0:
            raise ConfigError(f"inference.border_pad must be >= 0, got {self.border_pad}")
        _choice("padding_mode", self.padding_mode, PAD_MODES)
        if int(self.sw_batch_size) < 1:
            raise ConfigError(f"inference.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        _choice("tta", self.tta, TTA_MODES)
        if self.max_window_area is None or int(self.max_window_area) < 0:
            raise ConfigError(
                "inference.max_window_area must be >= 0 (0 = always tile), "
                f"got {self.max_window_area}"
            )

    def as_dict(self) -> dict[str, object]:
        """The settings as plain values (for metrics.json and model cards)."""
        return asdict(self)
