"""LightningDataModule for one labelled training volume and one labelled test volume.

The validation set is a z-contiguous block at the end of the training volume: neighbouring
slices are nearly identical (median Dice 0.96 between consecutive masks), so a random slice
hold-out would leak the training data into validation.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from emseg.data.dataset import EpochPatchSampler, RandomPatchDataset, SliceDataset
from emseg.errors import ConfigError, DataError
from emseg.io import read_pair

__all__ = ["EMDataModule"]

log = logging.getLogger(__name__)


class EMDataModule(L.LightningDataModule):
    """Random patches from the training volume; whole slices for validation and test.

    Args:
        train_image, train_mask: TIFF paths of the training volume and its mask.
        test_image, test_mask: TIFF paths of the test volume and its mask.
        val_slices: number of slices at the end of the training volume held out for validation.
        patch_size: side of the square training patches.
        batch_size: training patches per batch on each device: under DDP every process draws
            its own batches, so one optimizer step sees ``batch_size x devices x num_nodes``
            patches.
        samples_per_epoch: virtual epoch length in patches per device (``trainer.
            limit_train_batches`` sets the step budget; this only has to be at least that
            many batches). Under DDP the dataset holds ``samples_per_epoch x world size``
            patches, which :class:`EpochPatchSampler` splits between the processes, so
            an epoch has the same number of steps on any number of devices.
        fg_fraction: share of patches centred on mitochondria.
        context: adjacent slices per side given as extra channels (2.5D); 0 for 2D.
        mean, std: intensity normalisation of the [0, 1]-scaled images.
        num_workers: DataLoader worker processes for training patches.
        val_batch_size: whole slices per validation/test batch.
        train_transform: joint v2 augmentation (see :mod:`emseg.data.transforms`).
        pin_memory: pin host memory (useful with CUDA).
        multiprocessing_context: start method of loader workers; ``None`` picks ``fork`` where
            the process default is something else but fork exists (joblib's loky workers use
            spawn-like starts, under which the workers fail to start).
        seed: seed of the training patch stream (``${seed}`` in the configs); ``None`` draws
            it from torch's global generator when the volumes are loaded.
    """

    def __init__(
        self,
        train_image: str,
        train_mask: str,
        test_image: str,
        test_mask: str,
        val_slices: int = 16,
        patch_size: int = 256,
        batch_size: int = 4,
        samples_per_epoch: int = 4000,
        fg_fraction: float = 0.5,
        context: int = 0,
        mean: float = 0.548,
        std: float = 0.119,
        num_workers: int = 2,
        val_batch_size: int = 1,
        train_transform: Callable | None = None,
        pin_memory: bool = False,
        multiprocessing_context: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in {
            "val_slices": val_slices,
            "patch_size": patch_size,
            "batch_size": batch_size,
            "samples_per_epoch": samples_per_epoch,
            "val_batch_size": val_batch_size,
            "std": std,
        }.items():
            kind = (int, float) if name == "std" else int
            if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                per_device = " (per device)" if name.endswith("batch_size") else ""
                what = "positive" if name == "std" else "a positive integer"
                raise ConfigError(f"data.{name}{per_device} must be {what}, got {value!r}")
        if not isinstance(fg_fraction, int | float) or not 0.0 <= fg_fraction <= 1.0:
            raise ConfigError(f"data.fg_fraction must be in [0, 1], got {fg_fraction!r}")
        for name, value in {"context": context, "num_workers": num_workers}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.{name} must be an integer >= 0, got {value!r}")
        self.save_hyperparameters(logger=False, ignore=["train_transform"])
        self.train_transform = train_transform
        self.train_set: RandomPatchDataset | None = None
        self.val_set: SliceDataset | None = None
        self.test_set: SliceDataset | None = None

    @property
    def in_channels(self) -> int:
        """Channels of the network input: the slice plus ``context`` neighbours on each side."""
        return 2 * self.hparams.context + 1

    def _world(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached Trainer; ``(1, 0)`` without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def setup(self, stage: str | None = None) -> None:
        """Load volumes once (idempotent): training/validation for fit, the test volume for test."""
        hp = self.hparams
        if stage in (None, "fit", "validate") and self.train_set is None:
            image, mask = read_pair(hp.train_image, hp.train_mask)
            depth = image.shape[0]
            if hp.val_slices >= depth:
                raise ConfigError(
                    f"data.val_slices={hp.val_slices} leaves no training slices in "
                    f"{hp.train_image} ({depth} slices)"
                )
            if hp.patch_size > min(image.shape[1:]):
                raise ConfigError(
                    f"data.patch_size={hp.patch_size} is larger than the slices of "
                    f"{hp.train_image} ({image.shape[1]}x{image.shape[2]})"
                )
            world_size, _ = self._world()
            if hp.val_slices < world_size:
                raise ConfigError(
                    f"data.val_slices={hp.val_slices} is smaller than the {world_size} DDP "
                    "processes: every process needs at least one validation slice"
                )
            split = depth - hp.val_slices
            train_img, train_msk = image[:split], mask[:split]
            if not train_msk.any():
                log.warning("training mask %s has no foreground voxels", hp.train_mask)
            self.train_set = RandomPatchDataset(
                train_img,
                train_msk,
                patch_size=hp.patch_size,
                length=hp.samples_per_epoch * world_size,
                fg_fraction=hp.fg_fraction,
                context=hp.context,
                mean=hp.mean,
                std=hp.std,
                transform=self.train_transform,
                seed=hp.seed,
            )
            self.val_set = self._slices(image[split:], mask[split:])
            log.info(
                "train: slices 0-%d of %s; validation: slices %d-%d (z-contiguous hold-out)",
                split - 1,
                Path(hp.train_image).name,
                split,
                depth - 1,
            )
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._slices(*read_pair(hp.test_image, hp.test_mask))

    def _slices(self, image: np.ndarray, mask: np.ndarray) -> SliceDataset:
        hp = self.hparams
        return SliceDataset(image, mask, context=hp.context, mean=hp.mean, std=hp.std)

    def _eval_sampler(self, dataset: Dataset) -> DistributedSampler | None:
        """Under DDP, every ``world_size``-th slice per process and no slice twice.

        Lightning's default distributed sampler pads the shorter shards by repeating slices,
        which would count those slices twice in the synchronised volume metrics. Processes may
        then run one batch fewer than others, which is safe in evaluation (DDP synchronises
        buffers only on the first forward without gradients) as long as each has a slice.
        """
        world_size, rank = self._world()
        if world_size <= 1:
            return None
        if len(dataset) < world_size:
            raise DataError(
                f"{len(dataset)} slices cannot be shared by {world_size} DDP processes "
                "(each needs at least one)"
            )
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=False
        )

    def _train_sampler(self, dataset: Dataset) -> EpochPatchSampler:
        """Patch keys of the current epoch for this process.

        Lightning creates the first iterator of a fit (and of a resumed fit) before it calls
        ``set_epoch``, and loader workers fetch their first keys at once: the sampler must
        start at the epoch the fit loop is about to run, which it has restored by now.
        """
        world_size, rank = self._world()
        trainer = self.trainer
        epoch = 0
        if trainer is not None and getattr(trainer, "fit_loop", None) is not None:
            epoch = int(trainer.fit_loop.epoch_progress.current.processed)
        return EpochPatchSampler(len(dataset), num_replicas=world_size, rank=rank, epoch=epoch)

    def _loader(self, dataset, batch_size: int, train: bool, workers: int) -> DataLoader:
        if dataset is None:
            raise DataError("the data module was used before setup() loaded its volumes")
        sampler = self._train_sampler(dataset) if train else self._eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            drop_last=train,
            multiprocessing_context=self._worker_context() if workers > 0 else None,
        )

    def _worker_context(self) -> str | None:
        if self.hparams.multiprocessing_context is not None:
            return self.hparams.multiprocessing_context
        current = multiprocessing.get_start_method(allow_none=True)
        if current not in (None, "fork") and "fork" in multiprocessing.get_all_start_methods():
            return "fork"
        return None

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self._loader(self.train_set, hp.batch_size, True, hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size, False, 0)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.val_batch_size, False, 0)
