"""Datasets over in-memory ``(Z, Y, X)`` volumes.

* :class:`RandomPatchDataset` draws random training patches. Mitochondria cover only ~5 % of the
  voxels, so a fraction ``fg_fraction`` of patches is centred on a random foreground voxel; the
  rest are uniform. Each patch (position and augmentation) is a pure function of ``(seed,
  key)``, where :class:`EpochPatchSampler` makes the keys from ``(epoch, index)``: a run
  resumed from a checkpoint sees exactly the patches an uninterrupted run would have seen, on
  any number of loader workers or DDP processes.
* :class:`SliceDataset` yields whole slices in order, for validation and testing.

Both return ``(image, mask)``: image float32 ``(C, Y, X)`` normalised as
``(x / dtype_max - mean) / std`` with ``C = 2 * context + 1`` adjacent slices (2.5D input, slices
clamped at the volume ends), mask float32 ``(1, Y, X)`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchvision import tv_tensors

from emseg.data.normalization import to_unit_float

__all__ = ["EpochPatchSampler", "RandomPatchDataset", "SliceDataset", "context_slices"]


def context_slices(z: int, depth: int, context: int) -> np.ndarray:
    """Indices of the ``2 * context + 1`` slices centred on ``z``, clamped to ``[0, depth)``."""
    return np.clip(np.arange(z - context, z + context + 1), 0, depth - 1)


class RandomPatchDataset(Dataset):
    """Random square patches with foreground-aware sampling.

    Args:
        image: ``(Z, Y, X)`` uint8/uint16/float volume.
        mask: ``(Z, Y, X)`` uint8 volume in {0, 1}.
        patch_size: side of the square patch in pixels (at most the slice size).
        length: number of patches per epoch. The dataset is virtual: item ``key`` is the
            random patch number ``key`` of an endless stream; keys beyond ``length`` are valid
            (:class:`EpochPatchSampler` gives epoch ``e`` the keys ``e * length + i``).
        fg_fraction: probability that a patch is centred on a foreground voxel.
        context: adjacent slices on each side stacked as channels (0 = plain 2D).
        mean, std: normalisation of the [0, 1]-scaled image.
        transform: joint v2 transform applied to ``(Image, Mask)``.
        seed: seed of the patch stream; ``None`` draws one from torch's global generator (which
            ``seed_everything`` sets), so ``seed=`` of the run decides the patches either way.
    """

    def __init__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        patch_size: int,
        length: int,
        fg_fraction: float = 0.5,
        context: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
        transform: Callable | None = None,
        seed: int | None = None,
    ) -> None:
        depth, height, width = image.shape
        if patch_size > min(height, width):
            raise ValueError(f"patch_size {patch_size} exceeds the slice size {height}x{width}")
        self.image, self.mask = image, mask
        self.patch_size, self.length = patch_size, length
        self.fg_fraction, self.context = fg_fraction, context
        self.mean, self.std, self.transform = mean, std, transform
        if seed is None:
            seed = int(torch.randint(2**62, (), dtype=torch.int64))
        self.seed = int(seed)
        # Flat indices of foreground voxels: int32 keeps the EPFL volume's ~7 M indices at 28 MB.
        index_dtype = np.int32 if mask.size < 2**31 else np.int64
        self.fg_index = np.flatnonzero(mask).astype(index_dtype)

    def __len__(self) -> int:
        return self.length

    def _corner(self) -> tuple[int, int, int]:
        depth, height, width = self.image.shape
        p = self.patch_size
        if self.fg_index.size and torch.rand(()) < self.fg_fraction:
            flat = int(self.fg_index[int(torch.randint(self.fg_index.size, ()))])
            z, y, x = np.unravel_index(flat, self.image.shape)
            y0 = int(np.clip(y - p // 2, 0, height - p))
            x0 = int(np.clip(x - p // 2, 0, width - p))
            return int(z), y0, x0
        z = int(torch.randint(depth, ()))
        y0 = int(torch.randint(height - p + 1, ()))
        x0 = int(torch.randint(width - p + 1, ()))
        return z, y0, x0

    def item_seed(self, key: int) -> int:
        """The seed of patch ``key``: independent streams for every ``(seed, key)`` pair."""
        return int(np.random.SeedSequence([self.seed, int(key)]).generate_state(1, np.uint64)[0])

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The patch position and torchvision's random augmentation both draw from torch's
        # global generator, seeded here per patch and restored afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.item_seed(key))
            z, y0, x0 = self._corner()
            p = self.patch_size
            zs = context_slices(z, self.image.shape[0], self.context)
            image = to_unit_float(self.image[zs, y0 : y0 + p, x0 : x0 + p])
            mask = self.mask[z : z + 1, y0 : y0 + p, x0 : x0 + p]
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
    """Whole slices of a volume in z order (deterministic), for validation and testing."""

    def __init__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        context: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        self.image, self.mask = image, mask
        self.context, self.mean, self.std = context, mean, std

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, z: int) -> tuple[torch.Tensor, torch.Tensor]:
        zs = context_slices(z, self.image.shape[0], self.context)
        image = (to_unit_float(self.image[zs]) - self.mean) / self.std
        mask = self.mask[z : z + 1].astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(mask)
