"""Choose a trained model's inference settings on its validation hold-out: ``choose.py``.

``train.py`` runs this search once after training (``choose_settings``); this entry point runs
it on any emseg checkpoint later, with any candidate set (``settings_search=wide`` is
``experiment=best``'s): a run trained without the search, an old run, a fine-tuned model, or the
best configuration evaluated on a fast run's weights without retraining. The chosen block goes
into a copy (``output_ckpt``), so that the source checkpoint keeps its own block, or into the
source itself. The test volume is never read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from emseg.io import read_checkpoint, resolve_checkpoint_path
from emseg.io.checkpoint import new_checkpoint_path
from emseg.settings_search import SettingsSearch, choose_and_store

__all__ = ["run"]

log = logging.getLogger(__name__)


def _output_path(cfg: DictConfig) -> Path | None:
    """Where the block is written: ``None`` = into ``ckpt_path``; a new file otherwise."""
    if cfg.get("output_ckpt") is None:
        return None
    unset = ", or leave output_ckpt unset to store in ckpt_path"
    return new_checkpoint_path(cfg.output_ckpt, "choose.py", other=unset)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Search ``cfg.settings_search`` on the validation hold-out of ``cfg.ckpt_path`` and store
    the chosen ``evaluation`` block (``settings_search.json`` in ``cfg.paths.output_dir``).

    Args:
        cfg: the composed ``conf/choose.yaml``.

    Returns:
        The stored block (its ``validation_fg_iou`` is the chosen candidate's pooled fg IoU;
        for an ensemble written by ``ensemble.py``, ``validation_gain_over_best_member``).

    Raises:
        EmsegError: ``require_gain_over_members`` and the ensemble is below its best member
            on validation (nothing is stored).
        CheckpointError: ``ckpt_path`` is missing or not an emseg checkpoint.
        ConfigError: a bad candidate list, or an ``output_ckpt`` that exists.
    """
    search: SettingsSearch = instantiate(cfg.settings_search)  # checks the candidates
    source = resolve_checkpoint_path(cfg.ckpt_path)
    target = _output_path(cfg)
    config = read_checkpoint(source).get("emseg_config", {})
    data = config.get("data") or {}
    ensemble = config.get("ensemble")
    members = None
    if isinstance(ensemble, dict):  # written before member_validation existed: none scored
        members = ensemble.get("member_validation") or [None] * len(ensemble.get("members", []))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    block = choose_and_store(
        source,
        search,
        data,
        output_dir,
        into=target,
        members=members,
        require_gain_over_members=bool(cfg.get("require_gain_over_members", False)),
    )
    log.info("settings search: %.0f s", time.perf_counter() - start)
    return block
