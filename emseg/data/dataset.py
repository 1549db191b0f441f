"""Datasets over ``(Z, Y, X)`` volumes (in memory, or read from their store patch by patch).

* :class:`RandomPatchDataset` draws random training patches. Mitochondria cover only ~5 % of the
  voxels, so a fraction ``fg_fraction`` of patches is centred on a random foreground voxel; the
  rest are uniform. Each patch (position and augmentation) is a pure function of ``(seed,
  key)``, where :class:`EpochPatchSampler` makes the keys from ``(epoch, index)``: a run
  resumed from a checkpoint sees exactly the patches an uninterrupted run would have seen, on
  any number of loader workers or DDP processes.
* :class:`SliceDataset` yields whole slices in order, for validation and testing.

Both return ``(image, mask)``: image float32 ``(C, Y, X)`` normalised as
``(x / dtype_max - mean) / std`` (``x / dtype_max`` first mapped by the volume's percentiles
where it has an ``intensity_range``, :func:`~emseg.data.normalization.map_intensities`) with
``C = 2 * context + 1`` adjacent slices (2.5D input, slices clamped at the volume ends), mask
float32 ``(1, Y, X)`` in {0, 1, IGNORE} (IGNORE = 255: no label there; the losses and metrics
leave those pixels out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchvision import tv_tensors

from emseg.data.labels import IGNORE
from emseg.data.normalization import map_intensities, to_unit_float
from emseg.data.volumes import TrainingVolume

__all__ = ["EpochPatchSampler", "RandomPatchDataset", "SliceDataset", "context_slices"]


def context_slices(z: int, depth: int, context: int) -> np.ndarray:
    """Indices of the ``2 * context + 1`` slices centred on ``z``, clamped to ``[0, depth)``."""
    return np.clip(np.arange(z - context, z + context + 1), 0, depth - 1)


class _Sampling:
    """Where the patches of one :class:`TrainingVolume` may be centred.

    ``fg_index``: flat indices of its foreground targets. For a volume that is not labelled
    everywhere, the labelled voxels are counted per ``CELL x CELL`` tile of every slice
    (``cell_index``: flat tile numbers, ``cell_cumsum``: running labelled-voxel counts), so a
    labelled voxel is drawn exactly uniformly with one ``randint`` and one tile read, in memory
    of 1/64 of the voxels (a flat index of every labelled voxel would take 4-8 bytes each).
    """

    CELL = 8

    def __init__(self, volume: TrainingVolume) -> None:
        targets = volume.targets
        # int32 keeps the EPFL volume's ~7 M foreground indices at 28 MB.
        index_dtype = np.int32 if targets.size < 2**31 else np.int64
        self.fg_index = np.flatnonzero(targets == 1).astype(index_dtype)
        self.everywhere = volume.covers_image
        if self.everywhere:
            self.labelled = int(targets.size)
            return
        c = self.CELL
        depth, height, width = targets.shape
        padded = np.full((depth, -(-height // c) * c, -(-width // c) * c), IGNORE, np.uint8)
        padded[:, :height, :width] = targets
        counts = (padded != IGNORE).reshape(depth, padded.shape[1] // c, c, -1, c).sum((2, 4))
        self.cells_shape = counts.shape
        self.cell_index = np.flatnonzero(counts)
        self.cell_cumsum = np.cumsum(counts.ravel()[self.cell_index], dtype=np.int64)
        self.labelled = int(self.cell_cumsum[-1]) if self.cell_cumsum.size else 0

    def labelled_voxel(self, targets: np.ndarray) -> tuple[int, int, int]:
        """A uniformly drawn labelled voxel ``(z, y, x)`` of ``targets`` (torch's generator)."""
        rank = int(torch.randint(self.labelled, ()))
        cell = int(np.searchsorted(self.cell_cumsum, rank, side="right"))
        before = int(self.cell_cumsum[cell - 1]) if cell else 0
        z, cy, cx = np.unravel_index(int(self.cell_index[cell]), self.cells_shape)
        c = self.CELL
        tile = targets[z, cy * c : (cy + 1) * c, cx * c : (cx + 1) * c]
        ty, tx = np.unravel_index(int(np.flatnonzero(tile != IGNORE)[rank - before]), tile.shape)
        return int(z), int(cy * c + ty), int(cx * c + tx)


class RandomPatchDataset(Dataset):
    """Random square patches with foreground-aware sampling, from one or several volumes.

    Patches are centred only where labels exist: a foreground patch on a random foreground
    voxel of all volumes, any other patch on a random labelled voxel (volumes weighted by their
    labelled voxels). A volume labelled everywhere draws the corner uniformly instead (the
    sampling of runs before partial labels existed). Patch pixels without labels (outside a
    labels crop, or unlabelled) have the target :data:`~emseg.data.labels.IGNORE`.

    Args:
        image: ``(Z, Y, X)`` uint8/uint16/float volume (with ``mask``; or ``volumes``).
        mask: ``(Z, Y, X)`` uint8 targets in {0, 1, IGNORE}.
        patch_size: side of the square patch in pixels (at most the slice size).
        length: number of patches per epoch. The dataset is virtual: item ``key`` is the
            random patch number ``key`` of an endless stream; keys beyond ``length`` are valid
            (:class:`EpochPatchSampler` gives epoch ``e`` the keys ``e * length + i``).
        fg_fraction: probability that a patch is centred on a foreground voxel.
        context: adjacent slices on each side stacked as channels (0 = plain 2D); clamped to
            the volume's training slices.
        mean, std: normalisation of the [0, 1]-scaled image.
        transform: joint v2 transform applied to ``(Image, Mask)``.
        seed: seed of the patch stream; ``None`` draws one from torch's global generator (which
            ``seed_everything`` sets), so ``seed=`` of the run decides the patches either way.
        volumes: the labelled volumes (:class:`~emseg.data.volumes.TrainingVolume`), instead
            of ``image`` and ``mask``.
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        patch_size: int = 256,
        length: int = 1,
        fg_fraction: float = 0.5,
        context: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
        transform: Callable | None = None,
        seed: int | None = None,
        volumes: Sequence[TrainingVolume] | None = None,
    ) -> None:
        if volumes is None:
            volumes = [TrainingVolume(image, mask, 0, 0, "volume")]
        for volume in volumes:
            height, width = volume.image.shape[1:]
            if patch_size > min(height, width):
                raise ValueError(
                    f"patch_size {patch_size} exceeds the slice size {height}x{width} "
                    f"of {volume.name}"
                )
        self.volumes = list(volumes)
        self.patch_size, self.length = patch_size, length
        self.fg_fraction, self.context = fg_fraction, context
        self.mean, self.std, self.transform = mean, std, transform
        if seed is None:
            seed = int(torch.randint(2**62, (), dtype=torch.int64))
        self.seed = int(seed)
        self.sampling = [_Sampling(volume) for volume in self.volumes]
        self._fg_cumsum = np.cumsum([s.fg_index.size for s in self.sampling])
        self._labelled_cumsum = np.cumsum([s.labelled for s in self.sampling])

    @property
    def image(self):
        """The image of the first (usually the only) volume."""
        return self.volumes[0].image

    @property
    def mask(self) -> np.ndarray:
        """The targets of the first (usually the only) volume."""
        return self.volumes[0].targets

    def __len__(self) -> int:
        return self.length

    def _choose(self, cumsum: np.ndarray) -> int:
        """A volume drawn with probability proportional to its count (no draw for one)."""
        if len(cumsum) == 1:
            return 0
        return int(np.searchsorted(cumsum, int(torch.randint(int(cumsum[-1]), ())), side="right"))

    def _corner(self) -> tuple[int, int, int, int]:
        """``(volume, z, y0, x0)``: the patch's volume, centre slice and corner in its image."""
        p = self.patch_size
        if self._fg_cumsum[-1] and torch.rand(()) < self.fg_fraction:
            number = self._choose(self._fg_cumsum)
            volume, sampling = self.volumes[number], self.sampling[number]
            flat = int(sampling.fg_index[int(torch.randint(sampling.fg_index.size, ()))])
            z, y, x = np.unravel_index(flat, volume.targets.shape)
        else:
            number = self._choose(self._labelled_cumsum)
            volume, sampling = self.volumes[number], self.sampling[number]
            depth, height, width = volume.image.shape
            if sampling.everywhere:
                z = int(torch.randint(depth, ()))
                y0 = int(torch.randint(height - p + 1, ()))
                x0 = int(torch.randint(width - p + 1, ()))
                return number, z, y0, x0
            z, y, x = sampling.labelled_voxel(volume.targets)
        _, height, width = volume.image.shape
        y0 = int(np.clip(volume.y0 + y - p // 2, 0, height - p))
        x0 = int(np.clip(volume.x0 + x - p // 2, 0, width - p))
        return number, int(z), y0, x0

    def _targets(self, volume: TrainingVolume, z: int, y0: int, x0: int) -> np.ndarray:
        """``(1, p, p)`` targets of the patch at image corner ``(y0, x0)``, IGNORE off labels."""
        p = self.patch_size
        ty, tx = y0 - volume.y0, x0 - volume.x0
        height, width = volume.targets.shape[1:]
        if ty >= 0 and tx >= 0 and ty + p <= height and tx + p <= width:
            return volume.targets[z : z + 1, ty : ty + p, tx : tx + p]
        patch = np.full((1, p, p), IGNORE, np.uint8)
        ys, xs = slice(max(ty, 0), min(ty + p, height)), slice(max(tx, 0), min(tx + p, width))
        if ys.start < ys.stop and xs.start < xs.stop:
            patch[0, ys.start - ty : ys.stop - ty, xs.start - tx : xs.stop - tx] = volume.targets[
                z, ys, xs
            ]
        return patch

    def item_seed(self, key: int) -> int:
        """The seed of patch ``key``: independent streams for every ``(seed, key)`` pair."""
        return int(np.random.SeedSequence([self.seed, int(key)]).generate_state(1, np.uint64)[0])

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The patch position and torchvision's random augmentation both draw from torch's
        # global generator, seeded here per patch and restored afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.item_seed(key))
            number, z, y0, x0 = self._corner()
            volume, p = self.volumes[number], self.patch_size
            zs = context_slices(z, volume.depth, self.context)
            image = to_unit_float(volume.image[zs, y0 : y0 + p, x0 : x0 + p])
            if volume.intensity_range is not None:
                image = map_intensities(image, volume.intensity_range)
            mask = self._targets(volume, z, y0, x0)
            img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)))
            msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
            if self.transform is not None:
                img, msk = self.transform(img, msk)
        img = (img.as_subclass(torch.Tensor) - self.mean) / self.std
        return img.contiguous(), msk.as_subclass(torch.Tensor).float().contiguous()


class EpochPatchSampler(DistributedSampler):
    """Keys ``epoch * length + i`` of :class:`RandomPatchDataset`, sharded between processes.

    Lightning calls :meth:`set_epoch` before every epoch; the keys, hence the patches, depend
    only on the epoch and the position in it, never on what ran before (a resumed run draws
    the same patches) nor on the loader workers. As a ``DistributedSampler`` it is used as it
    is under DDP (Lightning would otherwise wrap it): process ``rank`` of ``num_replicas``
    takes every ``num_replicas``-th key, so no two processes train on the same patch.

    Args:
        length: keys per epoch over all processes.
        num_replicas, rank: DDP world size and this process's global rank.
        epoch: the first epoch (Lightning creates the first iterator of a fit, and of a resumed
            fit, before it calls :meth:`set_epoch`).
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0) -> None:
        if not 0 <= rank < num_replicas <= length:
            raise ValueError(f"cannot share {length} patches as rank {rank} of {num_replicas}")
        # No super().__init__(): it needs a dataset and an initialised process group.
        self.length, self.num_replicas, self.rank, self.epoch = length, num_replicas, rank, epoch
        self.num_samples = length // num_replicas  # equal shards: DDP steps stay in lockstep
        self.total_size = self.num_samples * num_replicas
        self.shuffle, self.drop_last, self.seed = True, True, 0  # attributes Lightning reads

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.length
        return iter(range(base + self.rank, base + self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class SliceDataset(Dataset):
    """Whole slices of a volume in z order (deterministic), for validation and testing.

    Args:
        image: ``(Z, Y, X)`` image slices; mask: ``(Z, Y, X)`` targets.
        context, mean, std: as for :class:`RandomPatchDataset`.
        intensity_range: the image's ``(p_low, p_high)`` percentiles (``data.percentiles``)
            mapping its [0, 1]-scaled slices before ``mean`` / ``std``; ``None``: no mapping.
    """

    def __init__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        context: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
        intensity_range: tuple[float, float] | None = None,
    ) -> None:
        self.image, self.mask = image, mask
        self.context, self.mean, self.std = context, mean, std
        self.intensity_range = intensity_range

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, z: int) -> tuple[torch.Tensor, torch.Tensor]:
        zs = context_slices(z, self.image.shape[0], self.context)
        unit = to_unit_float(self.image[zs])
        if self.intensity_range is not None:
            unit = map_intensities(unit, self.intensity_range)
        image = (unit - self.mean) / self.std
        mask = self.mask[z : z + 1].astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(mask)
