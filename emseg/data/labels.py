"""Label volumes -> training targets: ``(Z, Y, X)`` uint8 in {0, 1, :data:`IGNORE`}.

Annotations come in several conventions, each detected or set with ``data.labels``:

* ``binary``: a mask in {0, 1}, {0, 255} or bool (any value > 0 is a mitochondrion);
* ``instances``: an instance label image (integer ids; every id > 0 is a mitochondrion, 0 the
  background), as CREMI, OpenOrganelle and MitoEM distribute them;
* ``auto``: ``binary`` for values within {0, 1} or {0, 255}, ``instances`` for integer dtypes
  wider than 8 bits; a uint8 volume with other values is ambiguous (instance ids or classes?)
  and is refused with a hint.

``data.unlabelled`` names the value that marks voxels nobody annotated (e.g. 255 for a {0, 1}
mask, or 2 for a {0, 255} mask); they become :data:`IGNORE` and are excluded from the loss, the
metrics and the patch sampling. Voxels outside the labelled region of a volume (the labels
crop, the ROI) are :data:`IGNORE` as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emseg.errors import ConfigError, DataError

__all__ = ["CONVENTIONS", "IGNORE", "check_label_settings", "to_targets"]

IGNORE = 255
"""Target value of unlabelled voxels; the losses' and metrics' ``ignore_index`` (conf/loss)."""

CONVENTIONS = ("auto", "binary", "instances")


def check_label_settings(convention: object, unlabelled: object) -> None:
    """Raise :class:`ConfigError` unless ``data.labels`` / ``data.unlabelled`` are valid."""
    if convention not in CONVENTIONS:
        raise ConfigError(
            f"data.labels must be one of {', '.join(CONVENTIONS)}, got {convention!r}"
        )
    if unlabelled is not None and (
        isinstance(unlabelled, bool) or not isinstance(unlabelled, int) or unlabelled < 0
    ):
        raise ConfigError(
            "data.unlabelled must be a non-negative integer label value or null, got "
            f"{unlabelled!r}"
        )


def _distinct(labels: np.ndarray, unlabelled: int | None) -> set[int]:
    """The distinct stored values other than ``unlabelled`` (a histogram for 8-bit data)."""
    if labels.dtype.itemsize == 1:
        values = set(np.flatnonzero(np.bincount(labels.view(np.uint8).ravel(), minlength=256)))
    else:
        values = set(np.unique(labels).tolist())
    values.discard(unlabelled)
    return {int(v) for v in values}


def _resolve(labels: np.ndarray, convention: str, unlabelled: int | None, path: Path) -> str:
    """The convention of ``labels``: ``convention`` itself unless it is ``auto``."""
    if convention != "auto":
        return convention
    if labels.dtype == np.bool_:
        return "binary"
    if labels.dtype.itemsize > 1:
        return "instances"
    values = _distinct(labels, unlabelled)
    if values <= {0, 1} or values <= {0, 255}:
        return "binary"
    raise DataError(
        f"{path}: uint8 labels with values {sorted(values)[:8]} are neither a {{0, 1}} / "
        "{0, 255} mask nor clearly instance ids; set data.labels=instances (every id > 0 is a "
        "mitochondrion) or data.unlabelled=<value of unannotated voxels>"
    )


def to_targets(
    labels: np.ndarray,
    path: str | Path,
    convention: str = "auto",
    unlabelled: int | None = None,
) -> np.ndarray:
    """Training targets of a label block: ``(Z, Y, X)`` uint8, 1 = mitochondrion, 0 =
    background, :data:`IGNORE` = unlabelled.

    Args:
        labels: the stored labels, any shape (bool or integer dtype).
        path: the label volume, for messages.
        convention: ``auto`` | ``binary`` | ``instances`` (module docstring).
        unlabelled: the stored value of unannotated voxels, or ``None``.

    Raises:
        DataError: a float dtype, values outside the convention (named with what was found).
    """
    path = Path(str(path))
    check_label_settings(convention, unlabelled)
    if labels.dtype != np.bool_ and labels.dtype.kind not in "ui":
        raise DataError(
            f"{path}: labels must be bool or integers (a mask or instance ids), got dtype "
            f"{labels.dtype}"
        )
    kind = _resolve(labels, convention, unlabelled, path)
    if kind == "binary" and labels.dtype != np.bool_:
        values = _distinct(labels, unlabelled)
        if not (values <= {0, 1} or values <= {0, 255}):
            raise DataError(
                f"{path}: a binary mask holds only {{0, 1}} or {{0, 255}}, found "
                f"{sorted(values)[:8]}; is it an instance label image (data.labels=instances) "
                "or does one value mark unannotated voxels (data.unlabelled=<value>)?"
            )
    if kind == "instances" and labels.dtype.kind == "i" and bool((labels < 0).any()):
        raise DataError(f"{path}: instance labels must be >= 0 (0 = background), found negatives")
    targets = (labels > 0).astype(np.uint8)
    if unlabelled is not None:
        targets[labels == unlabelled] = IGNORE
    return targets
