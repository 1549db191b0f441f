"""LightningDataModule for one labelled training volume and one labelled test volume.

The validation set is a z-contiguous block at the end of the training volume: neighbouring
slices are nearly identical (median Dice 0.96 between consecutive masks), so a random slice
hold-out would leak the training data into validation. ``val_slices`` is a number of slices or
a fraction of the training depth; ``mean`` / ``std: auto`` are measured on the training slices
(never the hold-out) by :func:`emseg.data.normalization.sample_statistics`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from emseg.data.dataset import EpochPatchSampler, RandomPatchDataset, SliceDataset
from emseg.data.normalization import AUTO, check_statistic, sample_statistics
from emseg.errors import ConfigError, DataError
from emseg.io import open_volume, read_pair

__all__ = ["EMDataModule"]

log = logging.getLogger(__name__)


def _check_val_slices(value: object) -> None:
    """Check ``data.val_slices``: a positive integer or a fraction in (0, 1) (else ConfigError)."""
    integer = isinstance(value, int) and not isinstance(value, bool) and value > 0
    fraction = isinstance(value, float) and 0.0 < value < 1.0
    if not (integer or fraction):
        raise ConfigError(
            "data.val_slices must be a positive integer or a fraction in (0, 1) of the "
            f"training volume's depth, got {value!r}"
        )


class EMDataModule(L.LightningDataModule):
    """Random patches from the training volume; whole slices for validation and test.

    Args:
        train_image, train_mask: the training volume and its mask (any volume string of
            :func:`emseg.io.open_volume`: TIFF, ``file.h5:dataset``, ``store.zarr/array``, a
            folder or glob of slices).
        test_image, test_mask: the labelled test volume and its mask, or ``None`` when there
            is none (then ``test_after_fit`` is skipped; validation still scores the run).
        val_slices: slices at the end of the training volume held out for validation: a
            positive integer, or a fraction in (0, 1) of the training depth (rounded half up,
            at least 1 slice, at least 1 slice left for training).
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
        mean, std: intensity normalisation of the [0, 1]-scaled images, or ``"auto"``: measured
            on the training slices (:meth:`resolve_normalization`, called by :meth:`setup`).
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
        test_image: str | None = None,
        test_mask: str | None = None,
        val_slices: int | float = 16,
        patch_size: int = 256,
        batch_size: int = 4,
        samples_per_epoch: int = 4000,
        fg_fraction: float = 0.5,
        context: int = 0,
        mean: float | str = 0.548,
        std: float | str = 0.119,
        num_workers: int = 2,
        val_batch_size: int = 1,
        train_transform: Callable | None = None,
        pin_memory: bool = False,
        multiprocessing_context: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in {
            "patch_size": patch_size,
            "batch_size": batch_size,
            "samples_per_epoch": samples_per_epoch,
            "val_batch_size": val_batch_size,
        }.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                per_device = " (per device)" if name.endswith("batch_size") else ""
                raise ConfigError(
                    f"data.{name}{per_device} must be a positive integer, got {value!r}"
                )
        _check_val_slices(val_slices)
        # Resolved statistics; None while "auto" has not been measured yet.
        self.mean = check_statistic("data.mean", mean)
        self.std = check_statistic("data.std", std)
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
    def has_test_volume(self) -> bool:
        """Whether a labelled test volume was given (``data.test_image`` and ``test_mask``)."""
        return bool(self.hparams.test_image) and bool(self.hparams.test_mask)

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

    def held_out(self, depth: int) -> int:
        """Validation slices of a training volume of ``depth`` slices (``val_slices`` resolved).

        Raises:
            ConfigError: no training slice would be left.
        """
        val_slices = self.hparams.val_slices
        count = val_slices if isinstance(val_slices, int) else math.floor(val_slices * depth + 0.5)
        count = max(1, count)
        if count >= depth:
            raise ConfigError(
                f"data.val_slices={val_slices} leaves no training slices in "
                f"{self.hparams.train_image} ({depth} slices)"
            )
        return count

    def resolve_normalization(self, image: np.ndarray | None = None) -> tuple[float, float]:
        """``(mean, std)``, measuring those set to ``auto`` on the training slices (once).

        Args:
            image: the loaded ``(Z, Y, X)`` training volume; ``None`` opens the file lazily
                and reads only the sampled slices. Either way the hold-out is left out.

        Raises:
            DataError: ``std: auto`` on training slices of constant intensity.
        """
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        hp = self.hparams
        if image is None:
            with open_volume(hp.train_image, "image") as source:
                split = len(source) - self.held_out(len(source))
                stats = sample_statistics(source.z_range(0, split))
        else:
            split = len(image) - self.held_out(len(image))
            stats = sample_statistics(image[:split])
        origin = (
            f"from {stats.voxels} {'' if stats.exact else 'sampled '}voxels of {stats.slices} "
            f"slices of {Path(hp.train_image).name}, training slices 0-{split - 1}"
        )
        if self.std is None and not stats.std > 0:
            raise DataError(
                f"data.std={AUTO}: the training slices of {hp.train_image} have constant "
                f"intensity (std 0 {origin}); set data.std to a positive number"
            )
        for key, value in (("mean", stats.mean), ("std", stats.std)):
            if getattr(self, key) is None:
                setattr(self, key, value)
                log.info("data.%s=%s -> %.6f (%s)", key, AUTO, value, origin)
        return self.mean, self.std

    def resolved_settings(self) -> dict[str, int | float]:
        """The keys given relative to the data, as the numbers they stand for.

        ``mean`` / ``std: auto`` become the measured statistics and a fractional
        ``val_slices`` the number of held-out slices, so that a run config holding these
        values describes the run without the data (``eval.py split=val`` reads the count).
        Keys given as numbers are left out; without such keys nothing is read.
        """
        hp = self.hparams
        settings: dict[str, int | float] = {}
        if isinstance(hp.val_slices, float):
            with open_volume(hp.train_image, "image") as source:
                settings["val_slices"] = self.held_out(len(source))
        auto = [key for key in ("mean", "std") if getattr(self, key) is None]
        if auto:
            self.resolve_normalization()
            settings.update({key: getattr(self, key) for key in auto})
        return settings

    def setup(self, stage: str | None = None) -> None:
        """Load volumes once (idempotent): training/validation for fit, the test volume for test.

        ``auto`` statistics are measured here if :meth:`resolve_normalization` has not run yet.
        """
        hp = self.hparams
        if stage in (None, "fit", "validate") and self.train_set is None:
            image, mask = read_pair(hp.train_image, hp.train_mask)
            depth = image.shape[0]
            val_slices = self.held_out(depth)
            self.resolve_normalization(image)
            if hp.patch_size > min(image.shape[1:]):
                raise ConfigError(
                    f"data.patch_size={hp.patch_size} is larger than the slices of "
                    f"{hp.train_image} ({image.shape[1]}x{image.shape[2]})"
                )
            world_size, _ = self._world()
            if val_slices < world_size:
                count = "" if val_slices == hp.val_slices else f" ({val_slices} slices)"
                raise ConfigError(
                    f"data.val_slices={hp.val_slices}{count} is smaller than the {world_size} DDP "
                    "processes: every process needs at least one validation slice"
                )
            split = depth - val_slices
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
                mean=self.mean,
                std=self.std,
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
        if stage in (None, "test") and self.test_set is None and self.has_test_volume:
            self.resolve_normalization()
            self.test_set = self._slices(*read_pair(hp.test_image, hp.test_mask))

    def _slices(self, image: np.ndarray, mask: np.ndarray) -> SliceDataset:
        return SliceDataset(image, mask, context=self.hparams.context, mean=self.mean, std=self.std)

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
