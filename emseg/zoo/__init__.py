"""BioImage Model Zoo (bioimage.io) packages: export emseg models, run zoo models in emseg.

* :mod:`~emseg.zoo.export`: ``export.py format=bioimageio`` -> one validated ``.zip`` package;
* :mod:`~emseg.zoo.load`: ``predict.py model=<package.zip | rdf.yaml>`` -> a
  :class:`~emseg.inference.Checkpoint` for emseg's own pipeline;
* :mod:`~emseg.zoo.processing`: the packages' pre- / post-processing steps, slice by slice;
* :mod:`~emseg.zoo.architecture`: the network source shipped inside emseg's packages.

``bioimageio.core`` / ``bioimageio.spec`` are imported only when a package is written or read.
"""

from emseg.zoo.paths import is_package, model_argument

__all__ = ["is_package", "model_argument"]
