"""emseg: mitochondria segmentation in EM volumes with PyTorch Lightning and Hydra.

Importing the package registers the OmegaConf resolvers the configs use
(``${emseg_root:}``, ``${emseg_precision:...}``, ``${emseg_channels_last:...}``), so every
entry point (``train.py``, tests using Hydra's compose API) must import ``emseg`` first.
"""

from emseg.resolvers import register_resolvers

register_resolvers()

__all__ = ["register_resolvers"]
