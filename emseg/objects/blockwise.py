"""Instances of a volume larger than memory, block by block on the large-volume engine (daisy).

``measure.py input=<probabilities | mask> labels_output=<labels>.zarr`` (and ``predict.py
output=<store>.zarr instances=true`` after its prediction) run :func:`instances_blockwise`:
the same labels and object table as the in-memory path (:func:`emseg.objects.run.analyse`),
with memory bounded by a block (and the largest object), in phases that are each a daisy task
over the same blocks (:func:`emseg.blockwise.engine.run_blocks`):

1. ``objects-label``: each block's mask -> fragments (:func:`~emseg.objects.blocks.label_block`)
   into a scratch uint64 Zarr array (one chunk per block), their sizes / first voxels / boxes
   into ``label/<block>.npz``;
2. ``objects-faces``: each block's lower z / y / x faces -> the fragment pairs touching across
   them (:func:`~emseg.objects.blocks.face_pairs`) into ``faces/<block>.npz``;
3. the merge, in this process (:func:`~emseg.objects.blocks.merge_fragments`: union-find,
   ``objects.min_size``, ids in first-voxel order) -> ``merged.npz``;
4. ``objects-relabel``: each block's fragments -> object ids, into the labels array;
5. ``objects-measure``: each object measured on its own box
   (:func:`~emseg.objects.measure.measure_object`) by the block holding its first voxel.

The run's files live in ``<labels_output>.objects/`` (lock, record, scratch, done markers in
``tracking/<phase>``, worker logs): an interrupted run is resumed by the same command, a run
with other settings starts afresh. The labels are written into ``<run>/labels.zarr`` and
renamed into place with the table, summary and histogram at the end; the run directory is
then removed. Connected components only: the watershed split and hole filling work on whole
objects (``objects.split=none``, ``objects.fill_holes=false`` here).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg.errors import ConfigError, DataError

__all__ = [
    "ObjectBlockSettings",
    "ObjectsWorker",
    "check_blockwise_settings",
    "instances_blockwise",
    "uses_blockwise",
]

log = logging.getLogger(__name__)

PHASES = ("label", "faces", "relabel", "measure")


@dataclass(frozen=True)
class ObjectBlockSettings:
    """How blockwise instances run (the ``blockwise`` block of conf/measure.yaml).

    Attributes:
        enabled: ``auto`` (when the labels output is a Zarr store), ``true`` or ``false``.
        workers: local worker processes (numpy / scipy work, one core each).
        block_shape: ``(z, y, x)`` voxels per block, a multiple of ``chunks``; a block's
            fragments and labels are held in memory at once (uint64: 8 bytes a voxel).
        chunks: ``(z, y, x)`` chunks of the labels array.
        max_retries: attempts after the first before a block counts as failed.
        block_timeout_s: a block still running after this long is preempted and retried.
        progress: the live progress line of each phase.
    """

    enabled: Any = "auto"
    workers: int = 1
    block_shape: Sequence[int] = (64, 1024, 1024)
    chunks: Sequence[int] = (32, 256, 256)
    max_retries: int = 2
    block_timeout_s: float = 3600.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", True, False):
            raise ConfigError(
                f"blockwise.enabled must be auto, true or false, got {self.enabled!r}"
            )
        for key in ("block_shape", "chunks"):
            value = list(getattr(self, key))
            if len(value) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in value):
                raise ConfigError(
                    f"blockwise.{key} must be three positive integers (z, y, x), got {value}"
                )
            object.__setattr__(self, key, tuple(int(v) for v in value))
        if any(b % c for b, c in zip(self.block_shape, self.chunks, strict=True)):
            raise ConfigError(
                f"blockwise.block_shape {list(self.block_shape)} must be a multiple of "
                f"blockwise.chunks {list(self.chunks)} (blocks write whole chunks)"
            )
        if isinstance(self.workers, bool) or int(self.workers) < 1:
            raise ConfigError(f"blockwise.workers must be a positive integer, got {self.workers}")
        if int(self.max_retries) < 0:
            raise ConfigError(f"blockwise.max_retries must be >= 0, got {self.max_retries}")
        if not float(self.block_timeout_s) > 0:
            raise ConfigError(
                f"blockwise.block_timeout_s must be positive, got {self.block_timeout_s}"
            )


def uses_blockwise(blocks: ObjectBlockSettings, labels_output: str | None) -> bool:
    """Whether ``labels_output`` is written blockwise (``enabled`` auto: a Zarr output)."""
    from emseg.io.formats import parse_volume

    zarr = labels_output is not None and parse_volume(str(labels_output))[0] == "zarr"
    if blocks.enabled is True and not zarr:
        raise ConfigError(
            "blockwise.enabled=true writes the labels into a Zarr store: give "
            f"labels_output=<labels>.zarr (got {labels_output})"
        )
    return zarr and blocks.enabled is not False


# --- the per-block work, in the worker processes ---------------------------------------------


def _input_block(source: Any, kind: str, threshold: float, box: Sequence[int]) -> tuple:
    """``(mask, probability or None)`` of ``box`` ``(z0, z1, y0, y1, x0, x1)``."""
    from emseg.objects.volumes import probabilities_of

    z0, z1, y0, y1, x0, x1 = box
    raw = source.read(slice(z0, z1), slice(y0, y1), slice(x0, x1))
    if kind == "mask":
        return raw > 0, None
    probability = probabilities_of(raw, source.path)
    return probability > threshold, probability


def _save(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to ``path``, atomically (a killed worker leaves no half file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def _load_stats(path: Path) -> Any:
    from emseg.objects.blocks import FragmentStats

    with np.load(path) as data:
        return FragmentStats(data["ids"], data["sizes"], data["first"], data["boxes"])


@dataclass
class ObjectsWorker:
    """The function daisy runs in each worker process of one phase (see the module docstring).

    Attributes:
        phase: one of :data:`PHASES`.
        job: the run's plain settings (``input``, ``kind``, ``threshold``, ``connectivity``,
            ``shape``, ``block_shape``, ``run_dir``, ``voxel_size``, ``surface_sigma``).
        scheduler_pid: the scheduler process, watched so that the worker exits with it.
    """

    phase: str
    job: Mapping[str, Any]
    scheduler_pid: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.job["run_dir"])

    def index(self, box: Sequence[int]) -> int:
        """The block's index in the plan (z, then y, then x)."""
        shape, block = self.job["shape"], self.job["block_shape"]
        grid = [-(-s // b) for s, b in zip(shape, block, strict=True)]
        iz, iy, ix = (box[2 * a] // block[a] for a in range(3))
        return (iz * grid[1] + iy) * grid[2] + ix

    def __call__(self) -> None:
        import daisy
        import zarr

        from emseg.blockwise.engine import serve_blocks
        from emseg.blockwise.worker import exit_when_orphaned
        from emseg.objects.volumes import open_objects_input

        client = daisy.Client()
        if self.scheduler_pid is not None:
            exit_when_orphaned(int(self.scheduler_pid))
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
        )
        self._cache["fragments"] = zarr.open_array(str(self.run_dir / "fragments.zarr"), mode="r+")
        if self.phase in ("relabel", "measure"):
            self._cache["labels"] = zarr.open_array(
                str(self.run_dir / "labels.zarr" / "0"), mode="r+"
            )
            with np.load(self.run_dir / "merged.npz") as merged:
                self._cache["merged"] = {k: merged[k] for k in merged.files}
        with open_objects_input(str(self.job["input"])) as source:
            self._cache["source"] = source
            serve_blocks(client, getattr(self, f"_{self.phase}"), self.phase)

    def _label(self, box: Sequence[int]) -> None:
        from emseg.objects.blocks import label_block

        mask, _ = _input_block(self._cache["source"], self.job["kind"], self.job["threshold"], box)
        z0, z1, y0, y1, x0, x1 = box
        i = self.index(box)
        fragments, stats = label_block(
            mask, i, (z0, y0, x0), self.job["shape"], self.job["connectivity"]
        )
        self._cache["fragments"][z0:z1, y0:y1, x0:x1] = fragments
        _save(self.run_dir / "label" / f"{i}.npz", stats.as_arrays())

    def _faces(self, box: Sequence[int]) -> None:
        from emseg.objects.blocks import face_pairs

        connectivity, shape = int(self.job["connectivity"]), self.job["shape"]
        margin = 1 if connectivity > 1 else 0
        found = [np.zeros((0, 2), np.uint64)]
        for axis in range(3):
            start = box[2 * axis]
            if start == 0:
                continue
            index = []
            for other in range(3):
                lo, hi = box[2 * other], box[2 * other + 1]
                if other == axis:
                    index.append(slice(start - 1, start + 1))
                else:
                    index.append(slice(max(0, lo - margin), min(shape[other], hi + margin)))
            slab = self._cache["fragments"][tuple(index)]
            found.append(face_pairs(slab, axis, connectivity))
        _save(self.run_dir / "faces" / f"{self.index(box)}.npz", {"pairs": np.concatenate(found)})

    def _relabel(self, box: Sequence[int]) -> None:
        from emseg.objects.blocks import relabel_block

        z0, z1, y0, y1, x0, x1 = box
        merged = self._cache["merged"]
        fragments = self._cache["fragments"][z0:z1, y0:y1, x0:x1]
        labels = relabel_block(fragments, merged["ids"], merged["final"])
        self._cache["labels"][z0:z1, y0:y1, x0:x1] = labels

    def _measure(self, box: Sequence[int]) -> None:
        from emseg.objects.measure import MeasureSettings, measure_object, table_of

        merged, shape = self._cache["merged"], tuple(self.job["shape"])
        settings = MeasureSettings(surface_sigma=float(self.job["surface_sigma"]))
        voxel = self.job["voxel_size"]
        voxel = None if voxel is None else tuple(float(v) for v in voxel)
        rows = []
        for k in np.flatnonzero(merged["home"] == self.index(box)):
            z0, y0, x0, z1, y1, x1 = (int(v) for v in merged["boxes"][k])
            crop = self._cache["labels"][z0:z1, y0:y1, x0:x1]
            image = crop == k + 1
            probability = None
            if self.job["kind"] == "probabilities":
                crop_box = (z0, z1, y0, y1, x0, x1)
                _, probability = _input_block(
                    self._cache["source"], "probabilities", self.job["threshold"], crop_box
                )
            rows.append(
                measure_object(
                    k + 1, image, (z0, y0, x0, z1, y1, x1), shape, voxel, probability, settings
                )
            )
        if rows:
            _save(self.run_dir / "measure" / f"{self.index(box)}.npz", table_of(rows))


# --- the scheduler ---------------------------------------------------------------------------


def _input_kind(source: Any, kind: str) -> str:
    """``mask`` or ``probabilities`` without reading the whole volume (uint8 ``auto``: the
    values of the first, middle and last slices decide, as :func:`load_objects_input` does on
    the whole volume); instance labels are refused."""
    from emseg.objects.volumes import kind_of

    dtype = np.dtype(source.dtype)
    if kind == "auto":
        depth, values = source.shape[0], set()
        if dtype == np.uint8:
            for z in sorted({0, depth // 2, depth - 1}):
                values |= set(np.flatnonzero(np.bincount(source[z].ravel(), minlength=256)))
        kind = kind_of(dtype, values)
        if dtype == np.uint8:
            log.info("%s: uint8 read as %s (input_kind=auto; set it to be sure)", source.path, kind)
    if kind == "labels":
        raise ConfigError(
            f"input: {source.path} holds instance labels ({dtype}); measuring given labels "
            "reads them whole: give labels_output=<labels>.tif / .h5 (or none), or "
            "blockwise.enabled=false"
        )
    if kind == "mask" and dtype.kind == "f":
        raise DataError(f"{source.path}: a mask must be bool or uint8, got {dtype}")
    return kind


def check_blockwise_settings(settings: Any, truth: Any) -> None:
    if settings.split != "none" or settings.fill_holes:
        raise ConfigError(
            "blockwise instances are the connected components (objects.split=none, "
            "objects.fill_holes=false): the watershed split and hole filling work on whole "
            "objects; write labels_output=<labels>.tif / .h5 to run them in memory"
        )
    if truth is not None:
        raise ConfigError(
            "truth: instance metrics read the labels and the truth whole; score a volume that "
            "fits in memory with labels_output=<labels>.tif / .h5 (or none)"
        )


def _run_dir(labels_output: str) -> tuple[Path, Path]:
    """``(run directory, final labels group)`` of a Zarr ``labels_output``."""
    from emseg.io.formats import parse_volume

    _, path, inner = parse_volume(labels_output)
    if inner:
        tag = inner.strip("/").replace("/", "_")
        return path.with_name(f"{path.name}.{tag}.objects"), path / inner
    return path.with_name(f"{path.name}.objects"), path


def _start(run_dir: Path, record: dict) -> None:
    """Keep ``run_dir``'s work if it was done with ``record``, else start it afresh."""
    found = run_dir / "record.json"
    if found.exists():
        try:
            same = json.loads(found.read_text()) == record
        except (OSError, ValueError):
            same = False
        if same:
            log.info("resuming the blockwise instances in %s", run_dir)
            return
        log.info("%s was written with other settings: starting afresh", run_dir)
    for name in ("tracking", "label", "faces", "measure", "fragments.zarr", "labels.zarr"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "merged.npz").unlink(missing_ok=True)
    found.write_text(json.dumps(record, indent=2) + "\n")


def _run_phase(
    phase: str, plan: Any, job: dict, blocks: ObjectBlockSettings, run_dir: Path
) -> float:
    from emseg.blockwise.engine import BlockwiseError, format_block, run_blocks

    for folder in ("label", "faces", "measure"):
        (run_dir / folder).mkdir(exist_ok=True)
    outcome = run_blocks(
        plan,
        ObjectsWorker(phase, job, os.getpid()),
        int(blocks.workers),
        run_dir / "tracking" / phase,
        run_dir / "logs",
        int(blocks.max_retries),
        float(blocks.block_timeout_s),
        bool(blocks.progress),
        None,
        "127.0.0.1",
        task_id=f"objects-{phase}",
    )
    if outcome.failed or outcome.unfinished:
        listed = ", ".join(format_block(box) for box in outcome.failed[:20])
        raise BlockwiseError(
            f"objects-{phase}: {outcome.unfinished} of {outcome.total} blocks not done"
            f"{': failed ' + listed if listed else ''}; see {run_dir / 'logs'}; rerun the same "
            "command to do only the missing blocks"
        )
    return outcome.seconds


def _merge(
    plan: Any, run_dir: Path, min_size: int, shape: Sequence[int], block: Sequence[int]
) -> Any:
    """Merge every block's fragments; ``merged.npz`` (with each object's home block)."""
    from emseg.objects.blocks import merge_fragments

    count = len(plan)
    stats = [_load_stats(run_dir / "label" / f"{i}.npz") for i in range(count)]
    pairs = []
    for i in range(count):
        with np.load(run_dir / "faces" / f"{i}.npz") as data:
            pairs.append(data["pairs"])
    merged = merge_fragments(stats, pairs, min_size)
    grid = [-(-s // b) for s, b in zip(shape, block, strict=True)]
    zyx = (
        np.stack(np.unravel_index(merged.first, tuple(shape)), axis=1)
        if merged.count
        else np.zeros((0, 3), np.int64)
    )
    cell = zyx // np.asarray(block)
    home = (cell[:, 0] * grid[1] + cell[:, 1]) * grid[2] + cell[:, 2]
    _save(run_dir / "merged.npz", {**merged.as_arrays(), "home": home.astype(np.int64)})
    return merged


def _create_labels(
    run_dir: Path, shape: Sequence[int], dtype: Any, chunks: Sequence[int], name: str, voxel: Any
) -> None:
    import zarr

    from emseg.io.label_volumes import ome_label_attrs

    group = zarr.open_group(str(run_dir / "labels.zarr"), mode="w", zarr_format=3)
    group.create_array(
        "0",
        shape=tuple(shape),
        chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
        dtype=dtype,
        fill_value=0,
        dimension_names=("z", "y", "x"),
    )
    group.attrs["ome"] = ome_label_attrs(name, voxel)


def _collect_table(run_dir: Path, count: int) -> dict[str, np.ndarray]:
    from emseg.objects.measure import COLUMNS, empty_table

    parts = []
    for file in sorted((run_dir / "measure").glob("*.npz")):
        with np.load(file) as data:
            parts.append({name: data[name] for name in COLUMNS})
    if not parts:
        return empty_table()
    table = {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}
    order = np.argsort(table["id"], kind="stable")
    table = {name: values[order] for name, values in table.items()}
    if len(table["id"]) != count:
        raise RuntimeError(f"measured {len(table['id'])} objects of {count}")
    return table


def _place_labels(run_dir: Path, final: Path) -> None:
    """Rename the finished labels group over ``final`` (inside a store that may not exist)."""
    import zarr

    from emseg.io.label_volumes import replace_directory

    if final.parent != run_dir.parent and not final.parent.exists():  # a new store.zarr/key
        zarr.open_group(str(final.parent), mode="w", zarr_format=3)
    replace_directory(run_dir / "labels.zarr", final)


def instances_blockwise(
    input_spec: str,
    input_kind: str,
    threshold: float,
    labels_output: str,
    outputs: Any,
    settings: Any,
    measure: Any,
    voxel_size: tuple[float, float, float] | None,
    blocks: ObjectBlockSettings,
    truth: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Instances, their table and summary of ``input_spec``, block by block (module docstring).

    Args:
        input_spec: a probability or mask volume (any string of :func:`emseg.io.open_volume`).
        input_kind: ``auto`` | ``probabilities`` | ``mask``.
        threshold: probability above which a voxel is foreground.
        labels_output: the Zarr labels (``labels.zarr`` or ``store.zarr/key``).
        outputs: the :class:`~emseg.objects.outputs.ObjectOutputs` (already checked).
        settings: :class:`~emseg.objects.instances.InstanceSettings` (connected components).
        measure: :class:`~emseg.objects.measure.MeasureSettings`.
        voxel_size: ``(z, y, x)`` nm or ``None``.
        blocks: :class:`ObjectBlockSettings`.
        truth: must be ``None`` (instance metrics are in memory only).
        overwrite: replace existing outputs.

    Returns:
        The summary (as :func:`emseg.objects.run.analyse` gives it, plus ``blockwise``).

    Raises:
        ConfigError: settings this path does not do; BlockwiseError: failed blocks.
    """
    from emseg.blockwise.engine import import_daisy
    from emseg.blockwise.plan import BlockPlan
    from emseg.blockwise.run import exclusive_run
    from emseg.objects.measure import summarize
    from emseg.objects.volumes import open_objects_input

    import_daisy()
    check_blockwise_settings(settings, truth)
    start = time.perf_counter()
    with open_objects_input(input_spec) as source:
        kind = _input_kind(source, input_kind)
        shape, path = tuple(int(s) for s in source.shape), source.path
    block = tuple(min(b, s) for b, s in zip(blocks.block_shape, shape, strict=True))
    if math.prod(block) >= 2**32:
        raise ConfigError(f"blockwise.block_shape {list(block)} holds 2**32 voxels or more")
    plan = BlockPlan(shape, block[0], block[0], 0, None, block[1:])
    run_dir, final = _run_dir(labels_output)
    job = {
        "input": str(Path(input_spec).resolve()) if Path(input_spec).exists() else input_spec,
        "kind": kind,
        "threshold": float(threshold),
        "connectivity": int(settings.connectivity),
        "min_size": int(settings.min_size),
        "shape": list(shape),
        "block_shape": list(block),
        "chunks": list(blocks.chunks),
        "run_dir": str(run_dir.resolve()),
        "voxel_size": None if voxel_size is None else [float(v) for v in voxel_size],
        "surface_sigma": float(measure.surface_sigma),
    }
    seconds: dict[str, float] = {}
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_run(run_dir):
        _start(run_dir, job)
        import zarr

        if not (run_dir / "fragments.zarr").exists():
            zarr.create_array(
                str(run_dir / "fragments.zarr"),
                shape=shape,
                chunks=block,
                dtype=np.uint64,
                fill_value=0,
                zarr_format=3,
            )
        log.info(
            "instances of %s (%s, %s) blockwise: %d blocks of %s voxels, %d worker(s), into %s",
            path,
            kind,
            "x".join(map(str, shape)),
            len(plan),
            "x".join(map(str, block)),
            blocks.workers,
            final,
        )
        for phase in ("label", "faces"):
            seconds[phase] = _run_phase(phase, plan, job, blocks, run_dir)
        begin = time.perf_counter()
        merged = _merge(plan, run_dir, int(settings.min_size), shape, block)
        seconds["merge"] = time.perf_counter() - begin
        if not (run_dir / "labels.zarr").exists():
            _create_labels(
                run_dir, shape, merged.final.dtype, blocks.chunks, final.name, voxel_size
            )
        for phase in ("relabel", "measure"):
            seconds[phase] = _run_phase(phase, plan, job, blocks, run_dir)
        table = _collect_table(run_dir, merged.count)
        summary = summarize(table, shape, voxel_size)
        if summary["count"] == 0:
            log.warning("no objects found: the table is empty")
        summary["settings"] = settings.as_dict()
        summary["surface_sigma"] = float(measure.surface_sigma)
        seconds["total"] = time.perf_counter() - start
        summary["seconds"] = seconds
        summary["blockwise"] = {
            "blocks": len(plan),
            "block_shape": list(block),
            "workers": int(blocks.workers),
            "fragments": len(merged.ids),
        }
        summary = {
            "input": str(path),
            "input_kind": kind,
            "threshold": float(threshold) if kind == "probabilities" else None,
            "truth": None,
            **summary,
        }
        _place_labels(run_dir, final)
        written = outputs.write(None, table, summary, voxel_size, overwrite)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("%d objects; wrote %s", summary["count"], ", ".join(written.values()))
    return {**summary, "outputs": written}
