"""Mitochondria as objects: a uint32 instance label volume from a probability volume or a mask.

All arrays are ``(Z, Y, X)``. The steps, each optional except the first:

1. 3D connected components of the binary mask (``connectivity`` 1 / 2 / 3 = 6 / 18 / 26
   neighbours; :func:`scipy.ndimage.label`);
2. a seeded watershed split of touching mitochondria inside each component
   (:func:`skimage.segmentation.watershed`), with seeds either from the maxima of the distance
   transform (``split=distance``: h-maxima of the Euclidean distance to the background, so a
   neck must be ``seed_h`` narrower than both bodies to split them) or from high-probability
   cores (``split=cores``: connected regions of ``probability > core_threshold``, flooded over
   ``1 - probability``);
3. hole filling (cavities enclosed in 3D inside one object) and removal of objects smaller than
   ``min_size`` voxels; ids are renumbered ``1..N`` (components in the order of their first
   voxel, the pieces of a split component after one another).

Each component is processed on its own bounding box, so the cost follows the foreground, not
the volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from emseg.errors import ConfigError, DataError

__all__ = ["SPLITS", "InstanceSettings", "label_instances", "relabel_sequential"]

SPLITS = ("none", "distance", "cores")


@dataclass(frozen=True)
class InstanceSettings:
    """How a mask becomes instances (``conf/objects/default.yaml`` holds exactly these keys).

    Args:
        split: ``none`` (connected components only), ``distance`` (watershed from the distance
            transform's h-maxima) or ``cores`` (watershed from high-probability cores; needs
            probabilities).
        seed_h: ``distance``: the depth, in units of the smallest voxel side, that a distance
            maximum must stand above its surroundings to seed an object (larger: fewer splits).
        core_threshold: ``cores``: probability above which a voxel belongs to a core.
        seed_min_size: seeds (distance plateaus or cores) smaller than this many voxels are
            dropped (the object they sit in is then flooded from its other seeds).
        min_size: objects smaller than this many voxels are removed (0 = keep all).
        fill_holes: fill cavities enclosed in 3D inside each object.
        connectivity: neighbourhood of the connected components: 1 = 6 face neighbours,
            2 = 18, 3 = 26.
    """

    split: str = "none"
    seed_h: float = 2.0
    core_threshold: float = 0.9
    seed_min_size: int = 0
    min_size: int = 0
    fill_holes: bool = False
    connectivity: int = 1

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(
                f"objects.split must be one of {', '.join(SPLITS)}, got {self.split!r}"
            )
        if not float(self.seed_h) > 0:
            raise ConfigError(f"objects.seed_h must be positive, got {self.seed_h}")
        if not 0 < float(self.core_threshold) < 1:
            raise ConfigError(
                f"objects.core_threshold must be in (0, 1), got {self.core_threshold}"
            )
        for key in ("seed_min_size", "min_size"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"objects.{key} must be >= 0, got {getattr(self, key)}")
        if int(self.connectivity) not in (1, 2, 3):
            raise ConfigError(f"objects.connectivity must be 1, 2 or 3, got {self.connectivity}")

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (recorded beside every output)."""
        return asdict(self)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """``labels`` (``(Z, Y, X)``, integer ids >= 0) renumbered ``1..N`` keeping their order, as
    uint32 (uint64 past 2**32 - 1 objects); 0 stays background. One pass (a ``bincount``
    lookup), so cheap on whole volumes."""
    if labels.size == 0 or int(labels.max()) == 0:
        return np.zeros(labels.shape, dtype=np.uint32)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    count = int(present.sum())
    dtype = np.uint32 if count < 2**32 else np.uint64
    lookup = np.cumsum(present).astype(dtype)
    lookup[~present] = 0
    return lookup[labels]


def _h_maxima_seeds(distance: np.ndarray, h: float, structure: np.ndarray) -> np.ndarray:
    """Labelled regional maxima of ``distance`` that stand at least ``h`` above their
    surroundings (morphological reconstruction by dilation of ``distance - h``)."""
    from skimage.morphology import reconstruction

    seed = np.maximum(distance - h, 0)
    reconstructed = reconstruction(seed, distance, method="dilation")
    # Plateaus of distance - reconstructed near h are the h-maxima; a small tolerance absorbs
    # floating-point rounding of the reconstruction.
    maxima = (distance - reconstructed) >= h - 1e-6 * max(h, 1.0)
    maxima &= distance > 0
    return ndimage.label(maxima, structure)[0]


def _drop_small_seeds(seeds: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or seeds.max() == 0:
        return seeds
    sizes = np.bincount(seeds.ravel())
    small = sizes < min_size
    small[0] = False
    seeds = np.where(small[seeds], 0, seeds)
    return seeds


def _split_component(
    component: np.ndarray,
    probability: np.ndarray | None,
    settings: InstanceSettings,
    sampling: tuple[float, float, float],
    structure: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Watershed pieces of one component crop (``(z, y, x)`` bool): ``(labels, count)``."""
    from skimage.segmentation import watershed

    if settings.split == "distance":
        distance = ndimage.distance_transform_edt(component, sampling=sampling)
        seeds = _h_maxima_seeds(distance, float(settings.seed_h), structure)
        landscape = -distance
    else:
        assert probability is not None
        seeds = ndimage.label(component & (probability > settings.core_threshold), structure)[0]
        landscape = 1.0 - probability
    seeds = _drop_small_seeds(seeds, int(settings.seed_min_size))
    count = int(len(np.unique(seeds)) - 1)
    if count <= 1:
        return component.astype(np.int64), 1
    pieces = watershed(landscape, seeds, mask=component, connectivity=structure)
    return pieces.astype(np.int64), int(pieces.max())


def label_instances(
    mask: np.ndarray,
    settings: InstanceSettings | None = None,
    probability: np.ndarray | None = None,
    voxel_size: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Instance labels of a binary mask.

    Args:
        mask: ``(Z, Y, X)`` bool (or 0 / non-zero) foreground, already post-processed.
        settings: the :class:`InstanceSettings` (default: connected components only).
        probability: ``(Z, Y, X)`` float probabilities in [0, 1] (needed by ``split=cores``).
        voxel_size: ``(z, y, x)`` nm; makes the distance transform anisotropic where the voxels
            are (``None``: isotropic).

    Returns:
        ``(Z, Y, X)`` uint32 labels, 0 = background, objects ``1..N``.

    Raises:
        ConfigError: ``split=cores`` without probabilities.
        DataError: ``mask`` / ``probability`` not 3D or of different shapes.
    """
    settings = settings or InstanceSettings()
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise DataError(f"instances need a 3D (Z, Y, X) mask, got shape {mask.shape}")
    if probability is not None and probability.shape != mask.shape:
        raise DataError(
            f"probabilities {probability.shape} and mask {mask.shape} must have the same shape"
        )
    if settings.split == "cores" and probability is None:
        raise ConfigError(
            "objects.split=cores seeds from high-probability cores: the input must be "
            "probabilities, not a mask (or use objects.split=distance)"
        )
    mask = mask.astype(bool, copy=False)
    structure = ndimage.generate_binary_structure(3, int(settings.connectivity))
    components, count = ndimage.label(mask, structure)
    if voxel_size is None:
        sampling = (1.0, 1.0, 1.0)
    else:
        smallest = min(voxel_size)
        sampling = tuple(float(v) / smallest for v in voxel_size)
    out = np.zeros(mask.shape, dtype=np.uint32 if count < 2**31 else np.uint64)
    next_id = 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        # One voxel of background around the crop: the distance transform and hole filling
        # see the object's outside.
        padded = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(box, mask.shape, strict=True)
        )
        component = components[padded] == index
        size = int(component.sum())
        if size < int(settings.min_size):
            continue
        if settings.fill_holes:
            filled = ndimage.binary_fill_holes(component)
            component = filled & ((components[padded] == 0) | component)
        if settings.split == "none":
            pieces, n = component.astype(np.int64), 1
        else:
            prob = None if probability is None else probability[padded]
            pieces, n = _split_component(component, prob, settings, sampling, structure)
        target = out[padded]
        target[component] = (pieces[component] + (next_id - 1)).astype(out.dtype)
        next_id += n
    if int(settings.min_size) > 0 and next_id > 1:
        sizes = np.bincount(out.ravel())
        small = sizes < int(settings.min_size)
        small[0] = False
        if small.any():
            out[small[out]] = 0
    return relabel_sequential(out)
