"""emseg: mitochondria segmentation in EM volumes with PyTorch Lightning and Hydra.

Importing the package registers the OmegaConf resolvers the configs use
(``${emseg_root:}``, ``${emseg_precision:...}``, ``${emseg_channels_last:...}``), so every
entry point (``train.py``, tests using Hydra's compose API) must import ``emseg`` first.
"""

import warnings

from emseg.resolvers import register_resolvers

register_resolvers()
# Our conf/hydra/launcher/submitit_*.yaml extend the plugin's configs of the same name, which
# Hydra 1.3 merges with a deprecation warning about automatic schema matching on every run.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_", category=UserWarning)

__all__ = ["register_resolvers"]
