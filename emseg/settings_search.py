"""Inference settings chosen on a run's own validation hold-out after training.

nnU-Net decides its post-processing on the validation predictions of the trained model;
``train.py`` does the same (``choose_settings``): the best checkpoint predicts the validation
hold-out once per candidate ``(border_pad, tta)``, and every 3D median and threshold is scored
on those cached probabilities (pooled foreground IoU, as ``eval.py split=val`` scores). The
simplest candidate within ``margin`` of the best validation fg IoU wins
(:func:`choose`), and is stored in the checkpoint as its ``evaluation`` block, which
``eval.py`` / ``predict.py`` apply beneath explicit overrides. The test volume is never read.

How much the choice gains is reported with its uncertainty: every candidate keeps the
confusion counts of 3D blocks of the hold-out, and the block stores the paired bootstrap
interval of the chosen candidate's gain over the defaults (:mod:`emseg.intervals`;
``validation_gain_over_defaults``): a gain whose interval holds 0 is one the hold-out cannot
tell from noise. The chosen candidate's block counts are stored too
(``validation_blocks``), so that an ensemble of such runs (:mod:`emseg.ensemble`) is compared
with its best member on the same blocks (``validation_gain_over_best_member``,
:func:`gain_over_best_member`).

Cost: ``len(border_pads) + len(ttas) - 1`` predictions of the hold-out (the other TTAs are
tried with the border padding chosen without TTA); each median x threshold is then a box sum
over the cached probabilities (:func:`~emseg.postprocess.median_above`: the thresholded
median, without the median).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg.data.labels import IGNORE
from emseg.errors import ConfigError, EmsegError
from emseg.evaluate import validation_volumes
from emseg.inference import InferencePipeline, WindowSettings
from emseg.inference.checkpoint import load_checkpoint
from emseg.inference.pipeline import voxel_size_of
from emseg.inference.tta import TTA_MODES
from emseg.intervals import DEFAULT_BLOCK, fg_iou_difference_interval, volume_block_counts
from emseg.io.atomic import atomic_path, write_json_atomic
from emseg.io.checkpoint import read_checkpoint
from emseg.postprocess import OFF, Footprint, median_above, median_voxels

__all__ = [
    "Candidate",
    "SettingsSearch",
    "choose",
    "choose_and_store",
    "evaluation_block",
    "gain_over_best_member",
    "gain_over_defaults",
    "log_table",
    "median_candidates",
    "search_settings",
    "store_in_checkpoint",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_BORDER_PAD = WindowSettings().border_pad
# Forward passes per window of each TTA mode: the compute cost the simplicity order counts.
TTA_PASSES = {"none": 1, "flips": 4, "d4": 8}


@dataclass(frozen=True)
class SettingsSearch:
    """The candidates of the search after training (``settings_search`` in conf/train.yaml).

    Attributes:
        border_pads: ``inference.border_pad`` candidates (the default, 32, is always one).
        ttas: ``inference.tta`` candidates (``none`` is always one); the others are tried
            with the border padding chosen without TTA only.
        median_sides: 3D median candidates besides off, as in-plane sides in voxels; with a
            known voxel size each is the extent ``side x`` the in-plane voxel size in nm on
            every axis (fewer slices for thick sections, ``postprocess.median_nm``).
        thresholds: probability thresholds (0.5 is always one).
        margin: fg IoU that a more complex candidate must gain over the simplest one within
            reach to be chosen.
        max_slices: at most this many slices of the hold-out (memory: four float32 copies).
    """

    border_pads: Sequence[int] = (32, 0)
    ttas: Sequence[str] = ("none", "flips")
    median_sides: Sequence[int] = (3, 5, 7)
    thresholds: Sequence[float] = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2-0.8
    margin: float = 0.003
    max_slices: int | None = 64

    def __post_init__(self) -> None:
        pads = sorted({DEFAULT_BORDER_PAD, *map(int, self.border_pads)})
        ttas = ["none", *[str(t) for t in self.ttas if str(t) != "none"]]
        sides = sorted({int(s) for s in self.median_sides})
        thresholds = sorted({DEFAULT_THRESHOLD, *map(float, self.thresholds)})
        if any(p < 0 for p in pads):
            raise ConfigError(f"settings_search.border_pads must be >= 0, got {pads}")
        if any(t not in TTA_MODES for t in ttas):
            raise ConfigError(f"settings_search.ttas must be of {', '.join(TTA_MODES)}: {ttas}")
        if any(s < 3 or s % 2 == 0 for s in sides):
            raise ConfigError(f"settings_search.median_sides must be odd and >= 3, got {sides}")
        if any(not 0 < t < 1 for t in thresholds):
            raise ConfigError(f"settings_search.thresholds must be in (0, 1), got {thresholds}")
        if not float(self.margin) >= 0:
            raise ConfigError(f"settings_search.margin must be >= 0, got {self.margin}")
        if self.max_slices is not None and int(self.max_slices) < 1:
            raise ConfigError(f"settings_search.max_slices must be positive or null: {self}")
        for name, value in [("border_pads", pads), ("ttas", ttas), ("median_sides", sides)]:
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "thresholds", tuple(thresholds))


@dataclass(frozen=True)
class Median:
    """A 3D median candidate: its ``postprocess`` keys and its ``(Z, Y, X)`` footprint."""

    setting: dict[str, Any]
    footprint: Footprint

    @property
    def label(self) -> str:
        nm = self.setting.get("median_nm")
        size = "x".join(map(str, self.footprint))
        return "off" if self.footprint == OFF else f"{size}" + (f" ({nm:g} nm)" if nm else "")


MEDIAN_OFF = Median({"median_size": 0, "median_nm": None}, OFF)


@dataclass(frozen=True)
class Candidate:
    """One scored combination of settings, with its pooled validation fg IoU and the
    ``(blocks, 3)`` ``(tp, fp, fn)`` of the hold-out's 3D blocks it was pooled from."""

    border_pad: int
    tta: str
    median: Median
    threshold: float
    fg_iou: float
    blocks: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def changes(self) -> int:
        """How many settings differ from the defaults (the simplicity order's first key)."""
        return sum(
            [
                self.border_pad != DEFAULT_BORDER_PAD,
                self.tta != "none",
                self.median.footprint != OFF,
                self.threshold != DEFAULT_THRESHOLD,
            ]
        )

    def simplicity(self) -> tuple:
        """Sort key: fewer changes, then fewer forward passes, a smaller median, higher IoU."""
        median = int(np.prod(self.median.footprint))
        return (self.changes, TTA_PASSES.get(self.tta, 8), median, -self.fg_iou)

    def as_row(self) -> dict[str, Any]:
        """The candidate as a JSON row."""
        return {
            "border_pad": self.border_pad,
            "tta": self.tta,
            "median": self.median.label,
            "median_footprint": list(self.median.footprint),
            **self.median.setting,
            "threshold": self.threshold,
            "fg_iou": self.fg_iou,
            "changes": self.changes,
        }


def choose(candidates: Sequence[Candidate], margin: float) -> Candidate:
    """The simplest candidate whose fg IoU is within ``margin`` of the best one's.

    "Simplest" is :meth:`Candidate.simplicity`: fewest settings changed from the defaults
    (border 32, no TTA, no median, threshold 0.5), then the cheapest; so a change is kept only
    when it gains more than ``margin`` over every simpler candidate.
    """
    best = max(c.fg_iou for c in candidates)
    within = [c for c in candidates if c.fg_iou >= best - margin]
    return min(within, key=Candidate.simplicity)


def median_candidates(
    sides: Sequence[int], voxel_size: Sequence[float] | None, in_config: bool
) -> list[Median]:
    """Off and one median per in-plane side, deduplicated by footprint.

    With a voxel size the side is an extent, ``side x`` the in-plane voxel size in nm on every
    axis (so thick sections get fewer slices): stored as ``median_nm`` when the checkpoint
    records the voxel size (``in_config``), else as the per-axis ``median_size`` it gives here.
    Without one, ``side^3`` voxels.
    """
    medians = [MEDIAN_OFF]
    for side in sides:
        if voxel_size is None:
            median = Median({"median_size": int(side), "median_nm": None}, (side, side, side))
        else:
            nm = float(side) * min(voxel_size[1], voxel_size[2])
            footprint = median_voxels(nm, voxel_size)
            sizes = footprint[0] if len(set(footprint)) == 1 else list(footprint)
            setting = {"median_size": 0, "median_nm": nm} if in_config else {}
            median = Median(setting or {"median_size": sizes, "median_nm": None}, footprint)
        if all(m.footprint != median.footprint for m in medians):
            medians.append(median)
    return medians


def _counts_per_threshold(
    probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thresholds: Sequence[float],
    footprint: Footprint = OFF,
) -> list[np.ndarray]:
    """Block counts of ``median(probs) > t`` against ``masks`` for every t.

    ``probs`` float and ``masks`` in {0, 1, IGNORE}, ``(Z, Y, X)`` each; ``footprint`` the 3D
    median's ((1, 1, 1) = none), thresholded by :func:`~emseg.postprocess.median_above`
    (exactly the median filter's result, far cheaper). Unlabelled (IGNORE) voxels are left
    out, as eval.py leaves them out.

    Returns:
        Per threshold, ``(blocks, 3)`` ``(tp, fp, fn)`` of the :data:`DEFAULT_BLOCK` blocks of
        every volume in turn (the same blocks for every threshold and footprint).
    """
    counts: list[list[np.ndarray]] = [[] for _ in thresholds]
    for prob, mask in zip(probs, masks, strict=True):
        fg, labelled = mask == 1, mask != IGNORE
        for i, t in enumerate(thresholds):
            above = median_above(prob, footprint, t)
            counts[i].append(volume_block_counts(above, fg, labelled, DEFAULT_BLOCK))
    return [np.concatenate(c) for c in counts]


def _pooled_iou(blocks: np.ndarray) -> float:
    """Pooled fg IoU of ``(blocks, 3)`` counts (1.0 where there is nothing to find)."""
    tp, fp, fn = (int(v) for v in blocks.sum(axis=0))
    union = tp + fp + fn
    return tp / union if union else 1.0


def _iou_per_threshold(
    probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thresholds: Sequence[float],
    footprint: Footprint = OFF,
) -> list[float]:
    """Pooled fg IoU of ``median(probs) > t`` against ``masks`` for every t (as
    :func:`_counts_per_threshold`)."""
    return [_pooled_iou(c) for c in _counts_per_threshold(probs, masks, thresholds, footprint)]


def _scored(
    probs: list[np.ndarray],
    masks: list[np.ndarray],
    window: WindowSettings,
    medians: Sequence[Median],
    thresholds: Sequence[float],
) -> Iterator[Candidate]:
    """Every median x threshold candidate on the cached probabilities of one window setting."""
    for median in medians:
        counts = _counts_per_threshold(probs, masks, thresholds, median.footprint)
        for threshold, blocks in zip(thresholds, counts, strict=True):
            iou = _pooled_iou(blocks)
            yield Candidate(window.border_pad, window.tta, median, threshold, iou, blocks)


def _predict(pipeline: InferencePipeline, volumes: list, window: WindowSettings) -> list:
    """The ``(Z, Y, X)`` validation probabilities of each volume with ``window``, no median."""
    pipe = InferencePipeline(pipeline.checkpoint, window)
    return [np.stack(list(pipe.probabilities(v.image, v.lead))) for v in volumes]


def search_settings(
    checkpoint_path: Path | str, search: SettingsSearch
) -> tuple[Candidate, list[Candidate], dict[str, Any]]:
    """Score the candidates of ``search`` on the checkpoint's validation hold-out.

    Returns:
        The chosen candidate (:func:`choose`), every scored candidate, and facts for the
        record (voxel size, slices, seconds).
    """
    start = time.perf_counter()
    pipeline = InferencePipeline(load_checkpoint(checkpoint_path))
    configured = (pipeline.checkpoint.config.get("data") or {}).get("voxel_size")
    with validation_volumes(pipeline, search.max_slices) as volumes:
        voxel_size = voxel_size_of(pipeline.checkpoint.config, volumes[0].image)
        medians = median_candidates(search.median_sides, voxel_size, configured is not None)
        masks = [v.mask for v in volumes]
        scored: list[Candidate] = []
        base = WindowSettings()
        for border_pad in search.border_pads:
            window = replace(base, border_pad=border_pad)
            probs = _predict(pipeline, volumes, window)
            scored += _scored(probs, masks, window, medians, search.thresholds)
            log.info("settings search: border_pad %d scored (%.0f s)", border_pad, _since(start))
        border_pad = choose(scored, float(search.margin)).border_pad
        for tta in search.ttas[1:]:
            window = replace(base, border_pad=border_pad, tta=tta)
            probs = _predict(pipeline, volumes, window)
            scored += _scored(probs, masks, window, medians, search.thresholds)
            log.info("settings search: tta %s scored (%.0f s)", tta, _since(start))
    facts = {
        "checkpoint": str(pipeline.checkpoint.path),
        "voxel_size": list(voxel_size) if voxel_size else None,
        "validation_slices": int(sum(len(m) for m in masks)),
        "seconds": _since(start),
    }
    return choose(scored, float(search.margin)), scored, facts


def _since(start: float) -> float:
    return time.perf_counter() - start


def _default(scored: Sequence[Candidate]) -> Candidate:
    return next(c for c in scored if c.changes == 0)


def evaluation_block(chosen: Candidate, scored: Sequence[Candidate], data: Mapping) -> dict:
    """The checkpoint's ``evaluation`` block for ``chosen``, named for this run's data.

    ``chosen_on`` holds the run's training data (``train_image`` / ``train_mask``, or its
    ``volumes`` list), so that :func:`emseg.inference.settings.applicable_evaluation` keeps
    the block only for them.
    """
    chosen_on = {k: data[k] for k in ("train_image", "train_mask", "volumes") if data.get(k)}
    return {
        "chosen_on": chosen_on,
        "chosen_by": "this run's validation hold-out (emseg.settings_search, settings_search.json)",
        "inference": {"border_pad": chosen.border_pad, "tta": chosen.tta},
        "postprocess": dict(chosen.median.setting),
        "threshold": chosen.threshold,
        "validation_fg_iou": chosen.fg_iou,
        "validation_fg_iou_of_defaults": _default(scored).fg_iou,
        "validation_gain_over_defaults": gain_over_defaults(chosen, scored),
        "validation_blocks": None if chosen.blocks is None else chosen.blocks.tolist(),
        "validation_block_zyx": list(DEFAULT_BLOCK),
    }


def gain_over_defaults(chosen: Candidate, scored: Sequence[Candidate]) -> dict | None:
    """The paired block-bootstrap interval of ``chosen``'s fg IoU minus the defaults' on the
    hold-out (:func:`emseg.intervals.fg_iou_difference_interval`, with the block size); ``None``
    without block counts or with too few blocks."""
    default = _default(scored)
    if chosen.blocks is None or default.blocks is None:
        return None
    gain = fg_iou_difference_interval(chosen.blocks, default.blocks)
    return None if gain is None else {**gain, "block_zyx": list(DEFAULT_BLOCK)}


def _unscored(members: Sequence[Mapping[str, Any] | None]) -> list[int]:
    return [i for i, m in enumerate(members) if not m or m.get("validation_fg_iou") is None]


def gain_over_best_member(
    chosen: Candidate, members: Sequence[Mapping[str, Any] | None]
) -> dict[str, Any] | None:
    """An ensemble's chosen validation fg IoU against its best member's.

    Args:
        chosen: the ensemble's chosen candidate (with its block counts).
        members: each member's validation record, as :func:`emseg.ensemble.member_validation`
            copied it from the member's ``evaluation`` block (its own chosen settings on the
            same hold-out), or ``None`` for a member that has none.

    Returns:
        ``{"difference", "best_member", "best_member_fg_iou", "interval"}``: ``difference`` is
        ``chosen.fg_iou`` minus the best member's; ``interval`` the paired block-bootstrap
        interval (:func:`emseg.intervals.fg_iou_difference_interval`), ``None`` where the
        member has no block counts, its blocks hold other foreground (not the same hold-out),
        or there are too few blocks. ``None`` when a member has no validation score.
    """
    if not members or _unscored(members):
        return None
    best = max(range(len(members)), key=lambda i: float(members[i]["validation_fg_iou"]))
    best_iou = float(members[best]["validation_fg_iou"])
    interval = None
    theirs = members[best].get("validation_blocks")
    if chosen.blocks is not None and theirs is not None:
        theirs = np.asarray(theirs, dtype=np.int64)
        ours = chosen.blocks
        # tp + fn of a block is its labelled foreground: equal only on the same blocks.
        aligned = theirs.shape == ours.shape and np.array_equal(
            theirs[:, 0] + theirs[:, 2], ours[:, 0] + ours[:, 2]
        )
        if aligned:
            interval = fg_iou_difference_interval(ours, theirs)
    return {
        "difference": chosen.fg_iou - best_iou,
        "best_member": best,
        "best_member_fg_iou": best_iou,
        "interval": interval,
    }


def store_in_checkpoint(
    path: Path | str, block: Mapping[str, Any], into: Path | str | None = None
) -> None:
    """Replace the ``evaluation`` block of the checkpoint at ``path``, rewritten atomically in
    place, or written to ``into`` (a copy with the new block; ``path`` is left as it is)."""
    checkpoint = read_checkpoint(path, weights_only=False)  # an emseg checkpoint
    checkpoint["emseg_config"] = {**checkpoint["emseg_config"], "evaluation": dict(block)}
    with atomic_path(path if into is None else into) as tmp:
        torch.save(checkpoint, tmp)


def log_table(scored: Sequence[Candidate], chosen: Candidate) -> None:
    """One line per (border_pad, tta, median): fg IoU at 0.5 and at its best threshold."""
    groups: dict[tuple, list[Candidate]] = {}
    for c in scored:
        groups.setdefault((c.border_pad, c.tta, c.median.label), []).append(c)
    log.info("settings search on validation (fg IoU at 0.5 | best threshold):")
    for (pad, tta, median), rows in groups.items():
        at_default = next(c for c in rows if c.threshold == DEFAULT_THRESHOLD).fg_iou
        best = max(rows, key=lambda c: c.fg_iou)
        log.info(
            "  border_pad %3d  tta %-5s  median %-16s %.4f | %.4f at %.2f",
            pad,
            tta,
            median,
            at_default,
            best.fg_iou,
            best.threshold,
        )
    log.info(
        "chosen: border_pad %d, tta %s, median %s, threshold %.2f: fg IoU %.4f",
        chosen.border_pad,
        chosen.tta,
        chosen.median.label,
        chosen.threshold,
        chosen.fg_iou,
    )
    gain = gain_over_defaults(chosen, scored)
    if gain is not None:
        log.info(
            "gain over the defaults: %+.4f, %g %% interval %+.4f to %+.4f (%d blocks of the "
            "hold-out)%s",
            gain["difference"],
            100 * gain["confidence"],
            gain["low"],
            gain["high"],
            gain["blocks"],
            "" if gain["low"] > 0 else ": not resolved by this hold-out",
        )


def log_gain_over_best_member(gain: Mapping[str, Any]) -> None:
    """One line: the ensemble's validation gain over its best member, with its interval."""
    interval = gain["interval"]
    detail = (
        "no paired interval (too few blocks, or a member without block counts)"
        if interval is None
        else f"{100 * interval['confidence']:g} % interval {interval['low']:+.4f} to "
        f"{interval['high']:+.4f} ({interval['blocks']} blocks)"
        + ("" if interval["low"] > 0 or interval["high"] < 0 else ": not resolved")
    )
    log.info(
        "ensemble against its best member (member %d, validation fg IoU %.4f): %+.4f, %s",
        gain["best_member"],
        gain["best_member_fg_iou"],
        gain["difference"],
        detail,
    )


def choose_and_store(
    checkpoint_path: Path | str,
    search: SettingsSearch,
    data: Mapping,
    output_dir: Path,
    into: Path | str | None = None,
    members: Sequence[Mapping[str, Any] | None] | None = None,
    require_gain_over_members: bool = False,
) -> dict[str, Any]:
    """Search, log the table, write ``settings_search.json`` and store the chosen block in
    the checkpoint (or in ``into``, a copy of it with the block: :func:`store_in_checkpoint`).

    Args:
        members: for an ensemble, its members' validation records
            (:func:`gain_over_best_member`); the block then holds
            ``validation_gain_over_best_member``.
        require_gain_over_members: store nothing (``settings_search.json`` is still written)
            and raise when the ensemble's validation fg IoU is below its best member's.

    Returns:
        The stored ``evaluation`` block.

    Raises:
        EmsegError: ``require_gain_over_members`` and the ensemble does not beat its best
            member on validation; ConfigError: it is required without members to compare.
    """
    if require_gain_over_members and members is None:
        raise ConfigError(
            "require_gain_over_members: only an ensemble checkpoint (ensemble.py) has members "
            "to compare with"
        )
    if require_gain_over_members and _unscored(members):
        raise ConfigError(
            f"require_gain_over_members: ensemble members {_unscored(members)} have no settings "
            "chosen on validation to compare with; run choose.py on each member and build the "
            "ensemble from the checkpoints it writes"
        )
    chosen, scored, facts = search_settings(checkpoint_path, search)
    block = evaluation_block(chosen, scored, data)
    log_table(scored, chosen)
    if members is not None:
        gain = gain_over_best_member(chosen, members)
        block["validation_gain_over_best_member"] = gain
        if gain is None:
            unscored = _unscored(members)
            log.info("ensemble members %s have no validation score: not compared", unscored)
        else:
            log_gain_over_best_member(gain)
    record = {
        **facts,
        "search": asdict(search),
        "chosen": chosen.as_row(),
        "evaluation": block,
        "candidates": [c.as_row() for c in scored],
    }
    stored_in = Path(checkpoint_path if into is None else into)
    record["stored_in"] = str(stored_in)
    write_json_atomic(output_dir / "settings_search.json", record)
    gain = block.get("validation_gain_over_best_member")
    if require_gain_over_members and gain["difference"] < 0:
        raise EmsegError(
            f"require_gain_over_members: the ensemble's validation fg IoU {chosen.fg_iou:.4f} "
            f"is below its best member's (member {gain['best_member']}: "
            f"{gain['best_member_fg_iou']:.4f}); nothing stored (the search is in "
            f"{output_dir / 'settings_search.json'})"
        )
    store_in_checkpoint(checkpoint_path, block, into)
    log.info("stored in %s; written %s", stored_in, output_dir / "settings_search.json")
    return block
