"""Blockwise prediction of volumes too large for one process: ``predict.py output=out.zarr``.

The volume is cut into z blocks aligned to the output store's chunks (:mod:`.plan`); daisy
(funkelab) schedules them over N local worker processes or SLURM jobs (:mod:`.slurm`), records
the completed ones and retries failures (:mod:`.engine`); each worker loads the model once and
predicts block after block through the single inference pipeline into one OME-Zarr store
(:mod:`.worker`, :mod:`emseg.io.prediction_store`); :mod:`.run` ties them to ``predict.py``,
:mod:`.dry_run` estimates a run without writing.
"""

from emseg.blockwise.plan import BlockPlan
from emseg.blockwise.settings import BlockwiseSettings

__all__ = ["BlockPlan", "BlockwiseSettings"]
