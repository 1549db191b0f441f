"""LightningDataModule for one labelled training volume and one labelled test volume.

The validation set is a z-contiguous block at the end of the training volume: neighbouring
slices are nearly identical (median Dice 0.96 between consecutive masks), so a random slice
hold-out would leak the training data into validation. ``val_slices`` is a number of slices or
a fraction of the training depth; ``mean`` / ``std: auto`` are measured on the training slices
(never the hold-out) by :func:`emseg.data.normalization.sample_statistics`. With
``percentiles: [low, high]`` every image (each training / validation entry's, the test
volume's) is first mapped by its own percentiles, measured once per image on the whole image
(:func:`emseg.data.normalization.sample_percentiles`), as eval.py / predict.py measure theirs.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from emseg.data.dataset import EpochPatchSampler, RandomPatchDataset, SliceDataset
from emseg.data.labels import check_label_settings
from emseg.data.normalization import (
    AUTO,
    check_percentiles,
    check_statistic,
    pooled_statistics,
    sample_percentiles,
    sample_statistics,
)
from emseg.data.volumes import (
    Box,
    LazyImage,
    TrainingVolume,
    VolumeEntry,
    held_out_slices,
    load_volume,
    parse_entries,
    read_targets,
    split_regions,
    training_entries,
)
from emseg.errors import ConfigError, DataError
from emseg.io import open_volume, read_image
from emseg.io.formats import parse_volume

__all__ = ["EMDataModule"]

log = logging.getLogger(__name__)


def check_voxel_size(value: object) -> list[float] | None:
    """``data.voxel_size``: ``null`` or three positive numbers ``[z, y, x]`` in nanometres."""
    if value is None:
        return None
    ok = not isinstance(value, str | bytes) and hasattr(value, "__len__") and len(value) == 3
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in value
    )
    if not ok:
        raise ConfigError(
            f"data.voxel_size must be null or three positive numbers [z, y, x] in nm, got {value!r}"
        )
    return [float(v) for v in value]


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
        train_image, train_mask: the training volume and its labels (any volume string of
            :func:`emseg.io.open_volume`: TIFF, ``file.h5:dataset``, ``store.zarr/array``, a
            folder or glob of slices): the shorthand for one entry of ``volumes``.
        volumes: several labelled training volumes, each ``{image, labels[, offset, roi,
            name]}`` (:mod:`emseg.data.volumes`): labels of a crop of a larger image at an
            offset, an ROI of the image, or only some slices labelled (``unlabelled``).
        test_image, test_mask: the labelled test volume and its mask, or ``None`` when there
            is none (then ``test_after_fit`` is skipped; validation still scores the run).
        val_slices: slices at the end of each training volume's labelled region held out for
            validation: a positive integer, or a fraction in (0, 1) of the region's depth
            (rounded half up, at least 1 slice, at least 1 slice left for training). Unused
            with ``val_volumes``.
        val_volumes: explicit validation volumes (entries as in ``volumes``); then the
            training volumes are used whole.
        labels: the label convention, ``auto`` | ``binary`` | ``instances``
            (:mod:`emseg.data.labels`).
        unlabelled: the stored label value of unannotated voxels (excluded from the loss, the
            metrics and the patch sampling), or ``None``.
        voxel_size: ``[z, y, x]`` in nm; ``None`` takes the first training image's own (OME-Zarr,
            HDF5 ``resolution``, TIFF) if it records one. Stored with the run.
        in_memory_mb: training image slices larger than this are read from their store patch
            by patch instead of being loaded (labels are always loaded).
        name: a short name of the data for records and the hparams (default: the config
            group's name, or the first training image's file name).
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
            on the training slices (:meth:`resolve_normalization`, called by :meth:`setup`);
            with ``percentiles``, of the percentile-mapped images.
        percentiles: ``None``, or ``[low, high]`` (``0 <= low < high <= 100``, e.g. ``[1,
            99.8]``): every image is first mapped by its own percentiles of its [0, 1]-scaled
            intensities, ``clip((x - p_low) / (p_high - p_low), 0, 1)``
            (:meth:`intensity_range`); stored with the run, so eval.py / predict.py measure
            and map each volume they read the same way.
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
        train_image: str | None = None,
        train_mask: str | None = None,
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
        volumes: list[dict] | None = None,
        val_volumes: list[dict] | None = None,
        labels: str = "auto",
        unlabelled: int | None = None,
        voxel_size: list[float] | None = None,
        in_memory_mb: int = 2048,
        name: str | None = None,
        percentiles: list[float] | None = None,
    ) -> None:
        super().__init__()
        # Plain lists / dicts in the hyper-parameters (checkpoints load with weights_only).
        volumes, val_volumes, voxel_size, percentiles = (
            OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v
            for v in (volumes, val_volumes, voxel_size, percentiles)
        )
        self.entries = training_entries(train_image, train_mask, volumes)
        self.val_entries = (
            None if val_volumes is None else parse_entries(val_volumes, "data.val_volumes")
        )
        check_label_settings(labels, unlabelled)
        self.voxel_size = check_voxel_size(voxel_size)
        if isinstance(in_memory_mb, bool) or not isinstance(in_memory_mb, int) or in_memory_mb < 0:
            raise ConfigError(f"data.in_memory_mb must be an integer >= 0, got {in_memory_mb!r}")
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
        self.percentiles = check_percentiles(percentiles)
        self._ranges: dict[str, tuple[float, float]] = {}  # image spec -> measured percentiles
        if not isinstance(fg_fraction, int | float) or not 0.0 <= fg_fraction <= 1.0:
            raise ConfigError(f"data.fg_fraction must be in [0, 1], got {fg_fraction!r}")
        for name, value in {"context": context, "num_workers": num_workers}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.{name} must be an integer >= 0, got {value!r}")
        self.save_hyperparameters(logger=False, ignore=["train_transform"])
        self.train_transform = train_transform
        self._plan: tuple[list, list] | None = None
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

    def held_out(self, depth: int, name: str | None = None) -> int:
        """Validation slices of a labelled region of ``depth`` slices (``val_slices`` resolved).

        Raises:
            ConfigError: no training slice would be left.
        """
        return held_out_slices(self.hparams.val_slices, depth, name or self.entries[0].image)

    def plan(self) -> tuple[list[tuple[VolumeEntry, Box]], list[tuple[VolumeEntry, Box]]]:
        """``(training, validation)`` boxes of every volume entry (:func:`split_regions`)."""
        if self._plan is None:
            self._plan = split_regions(self.entries, self.val_entries, self.hparams.val_slices)
        return self._plan

    def _training_slices(self) -> str:
        """The training slices of every volume, for logs."""
        return "; ".join(
            f"{entry.label} slices {box.start[0]}-{box.stop[0] - 1}"
            for entry, box in self.plan()[0]
        )

    def resolve_normalization(self, images: list | None = None) -> tuple[float, float]:
        """``(mean, std)``, measuring those set to ``auto`` on the training slices (once).

        Args:
            images: the loaded training image slices of every volume (``(Z, Y, X)`` each);
                ``None`` opens the files lazily and reads only the sampled slices. Either way
                the validation hold-out is left out.

        Raises:
            DataError: ``std: auto`` on training slices of constant intensity.
        """
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        hp = self.hparams
        train_boxes = self.plan()[0]
        ranges = [self.intensity_range(entry.image) for entry, _ in train_boxes]
        if images is None:
            parts = []
            for (entry, box), mapped in zip(train_boxes, ranges, strict=True):
                with open_volume(entry.image, "image") as source:
                    view = source.z_range(box.start[0], box.stop[0])
                    parts.append(sample_statistics(view, intensity_range=mapped))
        else:
            ranges = ranges if self.percentiles is not None else [None] * len(images)
            parts = [
                sample_statistics(image, intensity_range=mapped)
                for image, mapped in zip(images, ranges, strict=True)
            ]
        stats = pooled_statistics(parts)
        origin = (
            f"from {stats.voxels} {'' if stats.exact else 'sampled '}voxels of {stats.slices} "
            f"slices: {self._training_slices()}"
        )
        if self.std is None and not stats.std > 0:
            raise DataError(
                f"data.std={AUTO}: the training slices have constant intensity (std 0 "
                f"{origin}); set data.std to a positive number"
            )
        for key, value in (("mean", stats.mean), ("std", stats.std)):
            if getattr(self, key) is None:
                setattr(self, key, value)
                mapped = " of the percentile-mapped images" if self.percentiles else ""
                log.info("data.%s=%s -> %.6f%s (%s)", key, AUTO, value, mapped, origin)
        del hp
        return self.mean, self.std

    def intensity_range(self, image: str) -> tuple[float, float] | None:
        """The ``(p_low, p_high)`` percentiles of image ``image`` (a volume string), or ``None``
        without ``data.percentiles``.

        Measured once per image on all its slices (whatever part of it trains or validates;
        eval.py / predict.py measure the volume they read the same way) by
        :func:`~emseg.data.normalization.sample_percentiles`, and logged.

        Raises:
            DataError: an unreadable or almost constant image.
        """
        if self.percentiles is None:
            return None
        if image not in self._ranges:
            with open_volume(image, "image") as source:
                measured = sample_percentiles(source, self.percentiles, name=image)
            self._ranges[image] = (measured.low, measured.high)
        return self._ranges[image]

    def resolve_voxel_size(self) -> list[float] | None:
        """``data.voxel_size``, or the first training image's own (nm, ZYX), or ``None``."""
        if self.voxel_size is None:
            with open_volume(self.entries[0].image, "image") as source:
                if source.voxel_size is not None:
                    self.voxel_size = [float(v) for v in source.voxel_size]
        return self.voxel_size

    def resolved_settings(self) -> dict[str, Any]:
        """The keys given relative to the data, as the values they stand for.

        ``mean`` / ``std: auto`` become the measured statistics, a fractional ``val_slices``
        of a single training volume the number of held-out slices (``eval.py split=val`` reads
        either form), and ``voxel_size`` the training image's own when it records one, so
        that a run config holding these values describes the run without the data. Keys
        given as numbers are left out; without such keys nothing is read.
        """
        hp = self.hparams
        settings: dict[str, Any] = {}
        if isinstance(hp.val_slices, float) and hp.train_image and self.val_entries is None:
            ((_, box),) = self.plan()[1]
            settings["val_slices"] = box.shape[0]
        auto = [key for key in ("mean", "std") if getattr(self, key) is None]
        if auto:
            self.resolve_normalization()
            settings.update({key: getattr(self, key) for key in auto})
        if hp.voxel_size is None and self.resolve_voxel_size() is not None:
            settings["voxel_size"] = self.voxel_size
        return settings

    def _load(self, entry: VolumeEntry, box: Box) -> TrainingVolume:
        """The training volume of ``box``, with its image's percentiles (``data.percentiles``)."""
        hp = self.hparams
        volume = load_volume(entry, box, hp.labels, hp.unlabelled, hp.in_memory_mb << 20)
        if self.percentiles is None:
            return volume
        return replace(volume, intensity_range=self.intensity_range(entry.image))

    def setup(self, stage: str | None = None) -> None:
        """Load volumes once (idempotent): training/validation for fit, the test volume for test.

        ``auto`` statistics are measured here if :meth:`resolve_normalization` has not run yet.
        """
        hp = self.hparams
        if stage in (None, "fit", "validate") and self.train_set is None:
            train_boxes, val_boxes = self.plan()
            world_size, _ = self._world()
            if len(val_boxes) == 1 and val_boxes[0][1].shape[0] < world_size:
                held = val_boxes[0][1].shape[0]
                count = "" if held == hp.val_slices else f" ({held} slices)"
                raise ConfigError(
                    f"data.val_slices={hp.val_slices}{count} is smaller than the {world_size} "
                    "DDP processes: every process needs at least one validation slice"
                )
            train = [self._load(entry, box) for entry, box in train_boxes]
            val = [self._load(entry, box) for entry, box in val_boxes]
            self.resolve_normalization([volume.image for volume in train])
            for volume in train:
                if not (volume.targets == 1).any():
                    log.warning("training labels of %s have no foreground voxels", volume.name)
            try:
                self.train_set = RandomPatchDataset(
                    patch_size=hp.patch_size,
                    length=hp.samples_per_epoch * world_size,
                    fg_fraction=hp.fg_fraction,
                    context=hp.context,
                    mean=self.mean,
                    std=self.std,
                    transform=self.train_transform,
                    seed=hp.seed,
                    volumes=train,
                )
            except ValueError as err:
                raise ConfigError(f"data.patch_size={hp.patch_size}: {err}") from err
            sets = [self._slices(volume.image, volume.targets, volume) for volume in val]
            self.val_set = sets[0] if len(sets) == 1 else ConcatDataset(sets)
            log.info(
                "train: %s; validation: %s",
                self._training_slices(),
                "; ".join(
                    f"{entry.label} slices {box.start[0]}-{box.stop[0] - 1}"
                    for entry, box in val_boxes
                ),
            )
        if stage in (None, "test") and self.test_set is None and self.has_test_volume:
            self.resolve_normalization()
            image = read_image(hp.test_image)
            targets = read_targets(
                hp.test_mask, hp.labels, hp.unlabelled, image.shape, hp.test_image
            )
            self.test_set = self._slices(
                image, targets, intensity_range=self.intensity_range(hp.test_image)
            )

    def _slices(
        self,
        image: Any,
        targets: np.ndarray,
        volume: TrainingVolume | None = None,
        intensity_range: tuple[float, float] | None = None,
    ) -> SliceDataset:
        """Whole slices of ``image`` (cut to the labelled y / x box of ``volume``), mapped by
        ``volume``'s percentiles or ``intensity_range`` (``data.percentiles``)."""
        if volume is not None:
            intensity_range = volume.intensity_range
        if volume is not None and (volume.y0, volume.x0, *targets.shape[1:]) != (
            0,
            0,
            *image.shape[1:],
        ):
            ys = slice(volume.y0, volume.y0 + targets.shape[1])
            xs = slice(volume.x0, volume.x0 + targets.shape[2])
            image = image[np.arange(len(image)), ys, xs]
        return SliceDataset(
            image,
            targets,
            context=self.hparams.context,
            mean=self.mean,
            std=self.std,
            intensity_range=intensity_range,
        )

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
        if self.train_set is not None and any(
            isinstance(v.image, LazyImage) and parse_volume(v.image.spec)[0] == "n5"
            for v in self.train_set.volumes
        ):
            # tensorstore (N5) aborts a forked child that calls it once the parent has.
            return "spawn"
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
