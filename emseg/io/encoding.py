"""How probabilities are stored: uint8 (``round(255 p)``, 1/255 resolution) or float16."""

from __future__ import annotations

import numpy as np

from emseg.errors import ConfigError

__all__ = ["OUTPUT_DTYPES", "check_output_dtype", "probabilities_as"]

OUTPUT_DTYPES = ("uint8", "float16")


def check_output_dtype(dtype: str, key: str = "output_dtype") -> str:
    """``dtype`` if it is one of :data:`OUTPUT_DTYPES`, else :class:`ConfigError`."""
    if str(dtype) not in OUTPUT_DTYPES:
        raise ConfigError(f"{key} must be one of {', '.join(OUTPUT_DTYPES)}; got {dtype!r}")
    return str(dtype)


def probabilities_as(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float probabilities in [0, 1] (any shape) as uint8 or float16."""
    if check_output_dtype(dtype) == "uint8":
        return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    return probs.astype(np.float16)
