"""Mitochondria as objects: instances, per-object measurements, instance metrics.

* :mod:`~emseg.objects.instances`: :func:`label_instances` (3D connected components, seeded
  watershed split, hole filling, minimum size) -> uint32 ``(Z, Y, X)`` labels;
* :mod:`~emseg.objects.measure`: :func:`measure_objects` (one row per object) and
  :func:`summarize`;
* :mod:`~emseg.objects.metrics`: :func:`instance_metrics` (IoU matching, P / R / F1 at 0.5,
  MitoEM AP 0.5:0.95, splits / merges);
* :mod:`~emseg.objects.volumes`: the inputs (probabilities, masks, labels) and true instances;
* :mod:`~emseg.objects.outputs`: the written files; :mod:`~emseg.objects.run`: ``measure.py``
  and the ``instances=true`` steps of predict.py / eval.py.

numpy / scipy / scikit-image only (no torch).
"""

from emseg.objects.instances import SPLITS, InstanceSettings, label_instances
from emseg.objects.measure import COLUMNS, MeasureSettings, measure_objects, summarize
from emseg.objects.metrics import AP_THRESHOLDS, instance_metrics

__all__ = [
    "AP_THRESHOLDS",
    "COLUMNS",
    "SPLITS",
    "InstanceSettings",
    "MeasureSettings",
    "instance_metrics",
    "label_instances",
    "measure_objects",
    "summarize",
]
